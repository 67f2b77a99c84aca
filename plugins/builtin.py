"""Registers zoo's builtin models, losses, datasets and training hooks.

Targets are import strings: listing them imports nothing heavy.
"""

from zoo import hookimpl


@hookimpl
def zoo_register(registry):
    """Offer the builtin zoo."""
    registry.model("dcgan", "plugins.models.dcgan:DCGAN",
                   "DCGAN generator + discriminator (Radford et al.), 64x64 or 32x32 images")
    registry.model("mnist_net", "plugins.models.mnist_net:MnistNet",
                   "PyTorch mnist example's digit classifier, Adadelta + StepLR: arch=official (the example's "
                   "today, default) or small (its pre-2019 one, the Grokking PyTorch guide's)")
    registry.model("resnet_i2i", "plugins.models.resnet_i2i:ResnetI2I",
                   "Image-to-image ResNet of ConvBlocks and ResnetBlocks for patch restoration")

    registry.loss("perceptual", "plugins.losses:PerceptualLoss",
                  "VGG19 feature loss: frozen slices, ImageNet-normalised inputs")
    registry.loss("mse", "plugins.losses:MSELoss", "Mean squared error as a custom nn.Module")
    registry.loss("l1", "plugins.losses:L1Loss", "Mean absolute error")
    registry.loss("bce", "plugins.losses:BCELoss", "Binary cross-entropy on logits")
    registry.loss("cross_entropy", "plugins.losses:CrossEntropyLoss", "Cross-entropy on class logits")

    registry.dataset("shapes", "plugins.datasets.shapes:ShapesDataset",
                     "Embedded procedural coloured shapes; needs no files", default=True)
    registry.dataset("imagefolder", "plugins.datasets.imagefolder:ImageFolderDataset",
                     "Images in ROOT/train/<class>/ and ROOT/test/<class>/")
    registry.dataset("mnist", "plugins.datasets.mnist:MnistDataset",
                     "MNIST digits from IDX files under a local root")
    registry.dataset("glob_patches", "plugins.datasets.glob_patches:GlobPatchesDataset",
                     "Degraded/clean patch pairs from images matching a glob")

    registry.hook("tensorboard", "plugins.hooks.tensorboard:TensorboardHook",
                  "Writes losses, learning rate, efficiency and image grids with tensorboardX",
                  default=True)
    registry.hook("samples", "plugins.hooks.samples:SampleGridHook",
                  "Saves PNG grids under samples/: generated, restored or classified test images", default=True)
    registry.hook("ema", "plugins.hooks.ema:EmaHook",
                  "Exponential moving average of the weights, updated every step; evaluated as ema/<metric>")
    registry.hook("early_stopping", "plugins.hooks.early_stopping:EarlyStoppingHook",
                  "Stops the run when the evaluation metric stops improving (patience evaluations)")
