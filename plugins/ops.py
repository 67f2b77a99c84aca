"""Image ops shared by the builtin datasets: degradations, paired crops, loading.

Images here are float tensors shaped ``(C, H, W)`` (or ``(..., C, H, W)``) in
``[-1, 1]`` unless a function says otherwise. Random draws use the global torch
RNG unless a ``torch.Generator`` is passed; datasets pass ``zoo.data.item_rng()``
(the engine's per-item generator, ``None`` outside the engine) so training
augmentation is exactly resumable.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Sequence, TypeVar

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from zoo.errors import RunError, UsageError

DEGRADE_KINDS = ("noise", "blur", "downscale")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
JPEG_MAGIC = b"\xff\xd8\xff"
RESIZE_CHUNK = 32  # images resized at once after a batch decode

# Each kind's amount at strength 1.0: noise std in [-1, 1] units, blur sigma in pixels,
# downscale factor (strength s downscales by 2 ** s).
DEFAULT_AMOUNTS = {"noise": 0.2, "blur": 1.2, "downscale": 2.0}
AMOUNT_NAMES = {"noise": "noise_sigma", "blur": "blur_sigma", "downscale": "scale"}  # as dataset options

ImageLike = TypeVar("ImageLike", torch.Tensor, Image.Image)


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Map an image from ``[-1, 1]`` to ``[0, 1]``."""
    return (image + 1.0) / 2.0


def from_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Map an image from ``[0, 1]`` to ``[-1, 1]``."""
    return image * 2.0 - 1.0


def _standard_noise(image: torch.Tensor,
                    generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Unit normal noise shaped like ``image``, on its device, from one generator or one per batch item.

    Drawn where each generator lives (a CPU item generator for an image on the GPU
    too), so an item's noise is the same whichever device or batch it lands in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        source = generator.device if generator is not None else image.device
        return torch.randn(image.shape, generator=generator, dtype=image.dtype, device=source).to(image.device)
    noise = torch.stack([torch.randn(image.shape[1:], generator=g, dtype=image.dtype, device=g.device)
                         for g in generator])
    if image.device.type == "cuda" and noise.device.type == "cpu":  # pinned: the copy does not stall the host
        return noise.pin_memory().to(image.device, non_blocking=True)
    return noise.to(image.device)


def degrade(image: torch.Tensor, kind: str,
            generator: torch.Generator | Sequence[torch.Generator] | None = None,
            strength: float = 1.0) -> torch.Tensor:
    """Return a degraded copy of ``image`` (``[-1, 1]``): ``noise``, ``blur`` or ``downscale``.

    ``strength`` scales the default degradation (0 leaves the image unchanged);
    ``generator`` drives the noise (the global torch RNG when ``None``); for a batch
    ``(N, C, H, W)`` it may be one generator per item, as each item alone would use.
    """
    if kind not in DEGRADE_KINDS:
        raise ValueError(f"unknown degradation {kind!r}: use one of {', '.join(DEGRADE_KINDS)}")
    if strength < 0:
        raise ValueError(f"degradation strength must be >= 0, not {strength}")
    if kind == "downscale":
        return degrade_by(image, kind, DEFAULT_AMOUNTS[kind] ** strength, generator)
    return degrade_by(image, kind, DEFAULT_AMOUNTS[kind] * strength, generator)


def degrade_by(image: torch.Tensor, kind: str, amount: float,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """``degrade`` by the kind's own measure: the noise's standard deviation (``[-1, 1]`` units), the blur's
    sigma (pixels) or the downscale factor (at least 1); 0 (1 for downscale) leaves the image unchanged."""
    if kind not in DEGRADE_KINDS:
        raise ValueError(f"unknown degradation {kind!r}: use one of {', '.join(DEGRADE_KINDS)}")
    if amount < (1 if kind == "downscale" else 0):
        raise ValueError(f"{kind} amount must be >= {1 if kind == 'downscale' else 0}, not {amount}")
    if amount == (1 if kind == "downscale" else 0):
        return image.clone()
    height, width = image.shape[-2:]
    if kind == "noise":
        out = image + _standard_noise(image, generator) * amount
    elif kind == "blur":
        # Odd kernel covering +-3 sigma; reflect padding needs it below twice the side.
        kernel = min(2 * math.ceil(3 * amount) + 1, 2 * min(height, width) - 1)
        out = TF.gaussian_blur(image, [kernel, kernel], [amount, amount])
    else:
        small = [max(1, round(height / amount)), max(1, round(width / amount))]
        out = TF.resize(TF.resize(image, small, antialias=True), [height, width], antialias=True)
    return out.clamp(-1.0, 1.0)


def check_degrade_kind(kind: str) -> None:
    """Raise a UsageError unless ``kind`` is a valid ``degrade`` dataset option."""
    if kind not in DEGRADE_KINDS:
        raise UsageError(f"unknown degrade {kind!r}: use --dataset-opt degrade=KIND with KIND one of "
                         f"{', '.join(DEGRADE_KINDS)}")


def _crop_flip_params(height: int, width: int, size: int,
                      generator: torch.Generator | None) -> tuple[int, int, bool]:
    """Draw one crop position and one flip decision (global torch RNG when ``generator`` is None)."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the image ({width}x{height})")
    top = int(torch.randint(0, height - size + 1, (), generator=generator).item())
    left = int(torch.randint(0, width - size + 1, (), generator=generator).item())
    flip = bool(torch.rand((), generator=generator).item() < 0.5)
    return top, left, flip


def _crop_flip(image: ImageLike, top: int, left: int, size: int, flip: bool) -> ImageLike:
    image = TF.crop(image, top, left, size, size)
    return TF.hflip(image) if flip else image


def paired_random_crop_flip(a: ImageLike, b: ImageLike, size: int,
                            generator: torch.Generator | None = None) -> tuple[ImageLike, ImageLike]:
    """Crop the same random ``size`` square from ``a`` and ``b`` and flip both or neither.

    ``a`` and ``b`` are tensors (``(..., H, W)``) or PIL images of equal size; the
    crop position and flip come from ``generator`` (the global torch RNG when None).
    """
    size_a, size_b = TF.get_size(a), TF.get_size(b)
    if size_a != size_b:
        raise ValueError(f"paired images differ in size: {size_a[1]}x{size_a[0]} vs {size_b[1]}x{size_b[0]}")
    top, left, flip = _crop_flip_params(size_a[0], size_a[1], size, generator)
    return _crop_flip(a, top, left, size, flip), _crop_flip(b, top, left, size, flip)


def random_crop_flip(image: ImageLike, size: int, generator: torch.Generator | None = None) -> ImageLike:
    """Crop a random ``size`` square from ``image`` and flip it half the time."""
    height, width = TF.get_size(image)
    top, left, flip = _crop_flip_params(height, width, size, generator)
    return _crop_flip(image, top, left, size, flip)


def center_crop_pair(a: ImageLike, b: ImageLike, size: int) -> tuple[ImageLike, ImageLike]:
    """Crop the central ``size`` square of both ``a`` and ``b``."""
    return TF.center_crop(a, [size, size]), TF.center_crop(b, [size, size])


def convert_channels(image: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert a ``(C, H, W)`` image between grey (1) and RGB (3); ``None`` keeps it."""
    if channels is None or image.shape[-3] == channels:
        return image
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
        return (image[..., :3, :, :] * weights[:, None, None]).sum(dim=-3, keepdim=True)
    if image.shape[-3] == 1:
        return image.expand(*image.shape[:-3], channels, *image.shape[-2:]).clone()
    raise ValueError(f"cannot convert a {image.shape[-3]}-channel image to {channels} channels")


def check_image_options(name: str, task: str, tasks: tuple[str, ...], image_size: int | None,
                        channels: int | None) -> None:
    """Raise a UsageError for a task a dataset cannot feed or an impossible size/channel count."""
    if task not in tasks:
        raise UsageError(f"dataset '{name}' cannot feed a {task} model: it feeds {', '.join(tasks)}; "
                         f"pick another --dataset")
    if image_size is not None and image_size < 1:
        raise UsageError(f"image size must be a positive number of pixels, not {image_size}")
    if channels not in (None, 1, 3):
        raise UsageError(f"{channels} image channels requested: dataset '{name}' gives 1 (grey) or 3 (RGB)")


def has_image_name(name: str) -> bool:
    """True for a non-hidden file name with an image extension PIL reads (no file system access)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def is_image_file(path: str) -> bool:
    """True for a regular, non-hidden file with an image extension PIL reads."""
    return has_image_name(os.path.basename(path)) and os.path.isfile(path)


def read_image_header(path: str) -> tuple[int, int, int]:
    """Return ``(channels, height, width)`` of an image file reading only its header."""
    try:
        with Image.open(path) as image:
            return (1 if image.mode in GREY_MODES else 3), image.height, image.width
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RunError(f"cannot read image {path}: {_reason(exc)}; replace or remove the file") from exc


def load_image(path: str, channels: int, short_side: int | None = None) -> Image.Image:
    """Decode an image file as a grey (``channels=1``) or RGB PIL image; RunError names a bad file.

    With ``short_side``, the image comes back resized so its shorter side is
    ``short_side`` (bilinear, antialiased: as ``TF.resize(image, [short_side])``),
    and a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale in the
    DCT domain (PIL's draft mode) first, never below ``short_side``: faster the
    larger the file, within a grey level or two of resizing the full decode.
    """
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            width, height = image.size
            box = (0.0, 0.0, float(width), float(height))  # the source area, in the decoded image's pixels
            if short_side is not None and 2 * short_side <= min(width, height):
                drafted = image.draft(mode, (short_side, short_side))
                box = drafted[1] if drafted else box
            image.load()
            if image.mode in ("I", "I;16"):  # 16-bit grey: keep the top 8 bits
                image = image.point(lambda value: value * (1 / 256)).convert("L")
            image = image.convert(mode)
            if short_side is None:
                return image
            return image.resize(_short_side_size(width, height, short_side), Image.BILINEAR, box=box)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RunError(f"cannot read image {path}: {_reason(exc)}; replace or remove the file") from exc


def read_jpeg_bytes(path: str) -> torch.Tensor | None:
    """The bytes of ``path`` as a 1-D uint8 tensor when it is a JPEG file, else ``None``; RunError names a bad file."""
    try:
        with open(path, "rb") as file:
            if file.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
                return None  # another format: read no further
            data = torch.empty(os.fstat(file.fileno()).st_size, dtype=torch.uint8)
            file.seek(0)
            count = file.readinto(data.numpy())  # straight into the tensor, no copy between
    except OSError as exc:
        raise RunError(f"cannot read image {path}: {exc.strerror or exc}; replace or remove the file") from exc
    return data[:count]


def decode_jpegs(encoded: list[torch.Tensor], channels: int, size: int, device: torch.device) -> torch.Tensor:
    """Decode JPEG bytes on ``device`` (nvjpeg on CUDA) to uint8 ``(N, C, size, size)``, as imagefolder crops.

    Each image is resized so its shorter side is ``size`` (bilinear, antialiased,
    in float, rounded) and centre-cropped: the geometry of ``load_image(path,
    channels, short_side=size)`` followed by a centre crop, within a few grey levels
    (the CPU path decodes in PIL's draft mode). Images of one size resize together,
    a few at a time, so large photos never stand in float all at once.
    """
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    if device.type == "cuda":  # torchvision decodes on a stream of its own, after what this stream has queued
        torch.cuda.current_stream(device).synchronize()
    with warnings.catch_warnings():  # torchvision 0.29 marks its image decoders deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(encoded, mode=mode, device=device)
    out = torch.empty((len(images), channels, size, size), dtype=torch.uint8, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(position)
    for (height, width), positions in by_size.items():
        for start in range(0, len(positions), RESIZE_CHUNK):
            chunk = positions[start:start + RESIZE_CHUNK]
            group = torch.stack([images[p] for p in chunk]).to(torch.float32)
            if min(height, width) != size:
                group = TF.resize(group, [size], antialias=True)
            group = TF.center_crop(group, [size, size]).round_().clamp_(0, 255).to(torch.uint8)
            out[host_values_to(chunk, device)] = group
    return out


def host_values_to(values: list, device: torch.device) -> torch.Tensor:
    """A small tensor of Python values on ``device``; pinned first on CUDA so the copy does not stall the host."""
    on_cuda = device.type == "cuda"
    return torch.tensor(values, pin_memory=on_cuda).to(device, non_blocking=on_cuda)


def _short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The ``(width, height)`` that ``TF.resize(image, [short_side])`` gives a ``width x height`` image."""
    long_side = int(short_side * max(width, height) / min(width, height))
    return (short_side, long_side) if width <= height else (long_side, short_side)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float ``(C, H, W)`` tensor in ``[-1, 1]``."""
    return from_unit_range(TF.pil_to_tensor(image).to(torch.float32) / 255.0)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
