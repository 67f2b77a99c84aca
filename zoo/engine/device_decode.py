"""Decoding images on the GPU: loader workers only read files, the device decodes each batch at once.

A dataset opts in, beside ``decode``/``finish``/``cache_key`` (see ``zoo.engine.cache``),
with ``encoded(index)`` (the item's file as a 1-D uint8 tensor of bytes, or ``None``
where only ``decode`` can read it) and ``decode_batch(encoded, device)`` (those bytes
decoded on ``device`` to uint8 ``(N, C, H, W)``, the geometry ``decode`` gives), and
names that decoding in ``device_decode_method`` (it keys a decoded cache the device fills).
An optional ``finish_batch(decoded, indices, generators)`` finishes a whole batch at
once with the items' generators, returning the collated batch (or ``None``: per item).

Each item is then finished (range, random flip, degradation) on the device, in the
main process, with the same per-item generator as in a worker, so augmentation and
the exact resume do not depend on where an image was decoded. Images a worker has
already decoded (read from a decoded cache, or a file only the CPU reads) travel as
one stacked uint8 tensor, a quarter of the bytes of finished float images, so later
epochs over a complete cache take this path too. A file the device cannot decode is
decoded on the CPU instead; one nothing can read becomes a bad item, as in a worker.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, NamedTuple

import torch
from torch.utils.data import Dataset, default_collate
from torchvision.io import decode_jpeg, encode_jpeg

from zoo.data import item_generator, item_seed, seeded_item
from zoo.engine.bad_items import BadItem, as_bad_item
from zoo.engine.cache import DecodedCache
from zoo.errors import first_line

DEVICE_METHODS = ("encoded", "decode_batch", "decode", "finish")


class EncodedItem(NamedTuple):
    """What a worker sends for one item: its file's bytes, or its image already decoded (uint8)."""

    index: int
    seed: int | tuple[int | str, ...]  # as EpochOrder's keys give it (zoo.data.item_seed)
    payload: torch.Tensor
    is_image: bool  # payload is a decoded image, not a file's bytes


def _source(dataset: Any) -> tuple[DecodedCache | None, Any]:
    """The decoded cache (if any) and the dataset it serves."""
    return (dataset, dataset.dataset) if isinstance(dataset, DecodedCache) else (None, dataset)


def supports_device_decode(dataset: Any) -> bool:
    """True when the dataset (or the dataset a decoded cache serves) can decode batches on a device."""
    source = _source(dataset)[1]
    return all(callable(getattr(source, name, None)) for name in DEVICE_METHODS) \
        and isinstance(getattr(source, "device_decode_method", None), str)


def cache_decoder_name(dataset: Any) -> str:
    """What keys a decoded cache filled by the device: the dataset's device decoding, named."""
    return f"device:{_source(dataset)[1].device_decode_method}"


@functools.lru_cache(maxsize=None)
def _probe_error(device: torch.device) -> str | None:
    """Why torchvision cannot decode a JPEG on ``device`` (a tiny image made here), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decode_jpeg([encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8))], device=device)
    except Exception as exc:  # a torchvision built without nvjpeg, a driver problem
        return f"torchvision cannot decode JPEGs on {device} ({first_line(exc)})"
    return None


def blocker(dataset: Any, device: torch.device, cache_built_first: bool) -> str | None:
    """Why this run's training images cannot be decoded on ``device``, or None when they can."""
    if device.type != "cuda":
        return f"it needs a CUDA device, not {device.type}"
    if not supports_device_decode(dataset):
        return (f"dataset {type(_source(dataset)[1]).__name__} does not offer it (it needs "
                f"{', '.join(DEVICE_METHODS)} and device_decode_method)")
    if cache_built_first:
        return "with several processes the decoded cache is built before training"
    return _probe_error(device)


# Words in a decoder's error that blame the device, not the file. torchvision wraps nvjpeg's and CUDA's
# errors, out of memory included, in a plain RuntimeError "Error while decoding JPEG images: <step>: <status>",
# the status a number: nvjpeg's, or CUDA's after "Failed to synchronize CUDA stream".
DEVICE_TROUBLE = ("out of memory", "cuda error", "cudaerror", "failed to synchronize", "failed to initialize",
                  "failed to create", "failed to attach")
# nvjpegStatus_t values that blame the device: not initialized, allocator failure, execution failed,
# arch mismatch, internal error. The others (bad JPEG, not supported, incomplete bitstream...) blame the file.
NVJPEG_DEVICE_STATUSES = frozenset({1, 5, 6, 7, 8})
_NVJPEG_STATUS = re.compile(r"failed to [^:\n]*:\s*(\d+)")


def _is_device_failure(exc: BaseException) -> bool:
    """Out of memory, a CUDA error or an nvjpeg status of the device's: the device is in trouble, not the file,
    so it must surface."""
    text = str(exc).lower()
    if isinstance(exc, torch.OutOfMemoryError) or any(words in text for words in DEVICE_TROUBLE):
        return True
    status = _NVJPEG_STATUS.search(text)
    return status is not None and int(status.group(1)) in NVJPEG_DEVICE_STATUSES


class EncodedItems(Dataset):
    """Worker side: an item's bytes (or its cached or CPU-decoded image), not the finished item.

    Takes the ``(index, seed)`` keys of ``zoo.engine.feed.EpochOrder``; a failure
    comes back as a :class:`~zoo.engine.bad_items.BadItem`, as from ``SeededItems``.
    Items in ``cpu_only`` (files the device could not decode) are decoded here.
    """

    def __init__(self, source: Any, cpu_only: set[int] | None = None) -> None:
        self.cache, self.dataset = _source(source)
        self.cpu_only = cpu_only if cpu_only is not None else set()

    def __getitem__(self, key: tuple[int, int]) -> EncodedItem | BadItem:
        index, seed = key
        try:
            if self.cache is not None:
                stored = self.cache.stored(index)
                if stored is not None:
                    return EncodedItem(index, seed, stored, True)
            data = None if index in self.cpu_only else self.dataset.encoded(index)
            if data is not None:
                return EncodedItem(index, seed, data, False)
            decoded = self.dataset.decode(index)  # a file only the CPU reads (a PNG, say)
            if self.cache is not None:
                self.cache.store([index], decoded[None])
            return EncodedItem(index, seed, decoded, True)
        except Exception as exc:  # a dataset may fail in any way on a bad file
            return as_bad_item(index, exc)

    def __len__(self) -> int:
        return len(self.dataset)


class EncodedBatch(NamedTuple):
    """A batch as the workers send it: decoded images stacked, files' bytes joined (a few tensors, not one each)."""

    keys: list[tuple[int, int]]  # (index, seed) of every readable item, in batch order
    image_at: list[int]  # positions in ``keys`` of the rows of ``images``
    images: torch.Tensor | None  # uint8 (n, C, H, W): one copy to the device for all of them
    file_at: list[int]  # positions in ``keys`` of the files in ``file_bytes``
    file_bytes: torch.Tensor | None  # the files' bytes one after another
    file_sizes: list[int]

    def files(self) -> list[torch.Tensor]:
        """Each file's bytes, as views of ``file_bytes``."""
        return list(torch.split(self.file_bytes, self.file_sizes)) if self.file_bytes is not None else []


def collate_encoded(items: list[EncodedItem | BadItem]) -> tuple[EncodedBatch | None, list[BadItem]]:
    """Stack a batch's decoded images and join its files' bytes; set bad items apart.

    One tensor per kind, not one per file: each tensor crossing from a worker holds
    a shared-memory file open, and a batch of hundreds would exhaust the open-file limit.
    """
    good = [item for item in items if isinstance(item, EncodedItem)]
    bad = [item for item in items if isinstance(item, BadItem)]
    if not good:
        return None, bad
    image_at = [position for position, item in enumerate(good) if item.is_image]
    file_at = [position for position, item in enumerate(good) if not item.is_image]
    images = torch.stack([good[p].payload for p in image_at]) if image_at else None
    file_bytes = torch.cat([good[p].payload for p in file_at]) if file_at else None
    return EncodedBatch([(item.index, item.seed) for item in good], image_at, images, file_at, file_bytes,
                        [len(good[p].payload) for p in file_at]), bad


class DeviceDecoder:
    """Main-process side: decodes an :class:`EncodedBatch` on the device and finishes its items there."""

    def __init__(self, source: Any, device: torch.device, say: Callable[[str], None] = lambda line: None) -> None:
        self.cache, self.dataset = _source(source)
        self.device = device
        self.say = say
        self.cpu_only: set[int] = set()  # files the device rejected: later epochs decode them in the workers

    def items(self, source: Any) -> EncodedItems:
        """The workers' side of this decoder (``make_loader``'s ``items``): it learns which files to decode itself."""
        return EncodedItems(source, self.cpu_only)

    def _decode(self, indices: list[int], files: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], list[BadItem]]:
        """Decode files on the device at once; where that fails, each alone, then on the CPU (a bad file: None).

        Out of memory and CUDA errors are raised: they are the device's trouble, not a file's.
        """
        try:
            return list(self.dataset.decode_batch(files, self.device)), []
        except Exception as exc:  # one file the device cannot read fails the whole batch: find it
            if _is_device_failure(exc):
                raise
        images: list[torch.Tensor | None] = []
        bad: list[BadItem] = []
        for index, data in zip(indices, files):
            try:
                images.append(self.dataset.decode_batch([data], self.device)[0])
                continue
            except Exception as exc:
                if _is_device_failure(exc):
                    raise
                rejected = first_line(exc)
            try:
                images.append(self.dataset.decode(index).to(self.device))
            except Exception as exc:
                images.append(None)
                bad.append(as_bad_item(index, exc))
                continue
            if not self.cpu_only:
                self.say(f"zoo: the device could not decode sample {index} ({rejected}); such files are decoded "
                         f"on the CPU instead.")
            self.cpu_only.add(index)
        return images, bad

    def __call__(self, sent: tuple[EncodedBatch | None, list[BadItem]]) -> tuple[Any, list[BadItem]]:
        """The collated, finished batch on the device, and the items that could not be read."""
        batch, bad = sent
        if batch is None:
            return None, bad
        images: list[torch.Tensor | None] = [None] * len(batch.keys)
        if batch.images is not None:
            for position, image in zip(batch.image_at, batch.images.to(self.device, non_blocking=True)):
                images[position] = image
        if batch.file_at:
            indices = [batch.keys[p][0] for p in batch.file_at]
            decoded, failed = self._decode(indices, batch.files())
            bad = bad + failed
            for position, image in zip(batch.file_at, decoded):
                images[position] = image
            self._store([(i, image) for i, image in zip(indices, decoded) if image is not None])
        kept = [(key, image) for key, image in zip(batch.keys, images) if image is not None]
        return (self._finish(kept) if kept else None), bad

    def _finish(self, kept: list[tuple[tuple[int, int], torch.Tensor]]) -> Any:
        """The dataset's ``finish_batch`` where it has one (one pass over the batch), else ``finish`` per item."""
        finish_batch = getattr(self.dataset, "finish_batch", None)
        if finish_batch is not None:
            batch = finish_batch(torch.stack([image for _, image in kept]), [index for (index, _), _ in kept],
                                 [item_generator(item_seed(seed, index)) for (index, seed), _ in kept])
            if batch is not None:  # None: this dataset finishes such batches per item
                return batch
        finished = []
        for (index, seed), image in kept:
            with seeded_item(seed, index):
                finished.append(self.dataset.finish(image, index))
        return default_collate(finished)

    def _store(self, decoded: list[tuple[int, torch.Tensor]]) -> None:
        """Keep what the device decoded in the decoded cache the first pass fills."""
        if self.cache is None or self.cache.complete or not decoded:
            return
        self.cache.store([index for index, _ in decoded], torch.stack([image for _, image in decoded]).cpu())

    def fill_rest(self, batch_size: int) -> None:
        """Decode on the device what the first pass left out of the cache (the dropped last batch).

        Run before the cache is published; files only the CPU reads, and bad ones, are left
        to ``finalize``, which decodes them and records errors as a build does.
        """
        if self.cache is None or self.cache.complete:
            return
        missing = [index for index in self.cache.missing() if index not in self.cache.bad]
        for start in range(0, len(missing), batch_size):
            readable = []
            for index in missing[start:start + batch_size]:
                try:
                    data = None if index in self.cpu_only else self.dataset.encoded(index)
                except Exception:  # left to finalize
                    continue
                if data is not None:
                    readable.append((index, data))
            if readable:
                indices = [index for index, _ in readable]
                decoded, _ = self._decode(indices, [data for _, data in readable])
                self._store([(i, image) for i, image in zip(indices, decoded) if image is not None])
