"""Images in and out of models: read a file, turn it into a model input, turn an output back into a picture.

The same steps the file-based datasets take for their test split, so ``zoo predict`` and
``zoo.load_run(...).preprocess`` see an image as training did. Imports torch only when used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import UsageError

if TYPE_CHECKING:  # only for annotations: importing this module must not import torch
    import torch
    from PIL import Image as PILImage


def read_image(path: str | Path) -> PILImage.Image:
    """Decode an image file; a missing or unreadable file is a one-line usage error naming it."""
    from PIL import Image
    file = Path(path)
    if not file.exists():
        raise UsageError(f"image {path} does not exist; pass an image file (png, jpg, ...).")
    if not file.is_file():
        raise UsageError(f"image {path} is not a file; pass an image file (png, jpg, ...).")
    try:
        with warnings.catch_warnings():  # a large image is read as asked; a far too large one is refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                image.load()
                return image
    except Image.DecompressionBombError:
        raise UsageError(f"image {path} has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, past PIL's safety "
                         f"limit for untrusted files; scale it down first.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot read image {path}: {reason}; pass an image file (png, jpg, ...).") from None


def preprocess_image(image: PILImage.Image, input_shape: Sequence[int], whole: bool = False) -> torch.Tensor:
    """Turn a PIL image into a model input of ``input_shape`` ``(C, H, W)``, in ``[-1, 1]``.

    The same steps the file-based datasets take for their test split: 16-bit
    grey keeps its top 8 bits, the image becomes grey (``C == 1``) or RGB, its
    shorter side is resized to the input size (antialiased) and the centre
    cropped to it, and pixels map from ``0..255`` to ``[-1, 1]``. ``whole``
    keeps the image's own size (for a model that takes any size). Returns a
    float32 ``(C, H, W)`` tensor on the CPU.
    """
    import torch
    import torchvision.transforms.v2.functional as TF
    from PIL import Image
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image (zoo.read_image(path) reads one), got {type(image).__name__}.")
    channels, height, width = (int(v) for v in input_shape)
    if channels not in (1, 3):
        raise UsageError(f"input shape {tuple(input_shape)} has {channels} channels; images give 1 or 3.")
    if image.mode in ("I", "I;16"):  # 16-bit grey: keep the top 8 bits, as the datasets do
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    image = image.convert("L" if channels == 1 else "RGB")
    if not whole:
        image = _resize_and_crop(image, height, width)
    tensor = TF.pil_to_tensor(image).to(torch.float32) / 255.0
    return tensor * 2.0 - 1.0


def _resize_and_crop(image: PILImage.Image, height: int, width: int) -> PILImage.Image:
    """Resize (antialiased) to cover ``height`` x ``width``, then crop the centre to it."""
    import torchvision.transforms.v2.functional as TF
    if height == width:
        image = TF.resize(image, [height], antialias=True)
    else:  # cover the wanted rectangle, then crop it
        scale = max(height / image.height, width / image.width)
        image = TF.resize(image, [max(height, round(image.height * scale)), max(width, round(image.width * scale))],
                          antialias=True)
    return TF.center_crop(image, [height, width])


def to_image(tensor: torch.Tensor) -> PILImage.Image:
    """Turn a ``(C, H, W)`` image in ``[-1, 1]`` (C 1 or 3) into a PIL image (grey or RGB)."""
    import torch
    from PIL import Image
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a (C, H, W) torch.Tensor image, got {type(tensor).__name__}.")
    image = tensor.detach().float().cpu()
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) image, got shape {tuple(image.shape)}")
    pixels = ((image + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array)  # uint8: "L" or "RGB"
