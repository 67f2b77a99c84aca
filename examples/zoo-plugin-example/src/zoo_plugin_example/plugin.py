"""The module the ``zoo`` entry point names: it registers this plugin's entries.

Targets are import strings, so ``zoo list`` reads this module without importing
torch or any of the modules named below.
"""

from zoo import hookimpl


@hookimpl
def zoo_register(registry):
    """Offer one model, one loss, one dataset and one training hook."""
    registry.model("tiny_autoencoder", "zoo_plugin_example.model:TinyAutoencoder",
                   "Small convolutional encoder/decoder that restores degraded images")
    registry.loss("ssim_lite", "zoo_plugin_example.losses:SSIMLiteLoss",
                  "1 - SSIM with a uniform window (structural similarity), plus optional L1")
    registry.dataset("stripes", "zoo_plugin_example.datasets:StripesDataset",
                     "Procedural striped images in four orientations; needs no files")
    registry.hook("loss_spike_alarm", "zoo_plugin_example.hooks:LossSpikeAlarm",
                  "Logs the largest loss of each log step and stops the run when it exceeds a threshold")
