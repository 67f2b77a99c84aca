"""A decoded-image cache: decode once, keep uint8 images at the training size in a memory-mapped file.

A dataset opts in by offering ``decode(index)`` (the deterministic, expensive part of
an item, as a uint8 ``(C, H, W)`` tensor), ``finish(decoded, index)`` (the rest:
random augmentation, range, label) and ``cache_key()`` (what the decoded images
depend on: files, sizes, transforms). A change in any of those gives a new key, so
the cache is rebuilt rather than served stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from zoo.errors import RunError, ZooError


def default_root() -> Path:
    """``$ZOO_CACHE_DIR``, else ``~/.cache/zoo/decoded``."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo" / "decoded")


def supports_cache(dataset: Any) -> bool:
    """True when the dataset offers decode, finish and cache_key."""
    return all(callable(getattr(dataset, name, None)) for name in ("decode", "finish", "cache_key"))


class DecodedCache(Dataset):
    """Serves a dataset from its decoded images, built into ``root`` on first use."""

    def __init__(self, dataset: Any, root: Path) -> None:
        self.dataset = dataset
        key = hashlib.sha256(json.dumps(dataset.cache_key(), default=str).encode()).hexdigest()[:24]
        self.shape = (len(dataset), *dataset.image_shape)
        self.path = Path(root) / f"{key}-{'x'.join(map(str, self.shape))}.u8"
        self.bad_path = self.path.with_name(self.path.name + ".bad.json")
        self._array: np.memmap | None = None
        if not self.path.exists():
            self._build()
        self.bad = {int(k): v for k, v in json.loads(self.bad_path.read_text()).items()} \
            if self.bad_path.exists() else {}

    def _build(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        bad: dict[int, str] = {}
        try:
            array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=self.shape)
            for index in tqdm(range(self.shape[0]), desc=f"decoding {self.dataset.split} once", unit="img",
                              file=sys.stderr, mininterval=0.5, leave=False):
                try:
                    array[index] = self.dataset.decode(index).numpy()
                except ZooError as exc:  # reported when the sample is used (or skipped: --skip-bad-files)
                    bad[index] = str(exc).splitlines()[0]
            array.flush()
            del array
            if bad:
                self.bad_path.write_text(json.dumps(bad))
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RunError(f"could not write the decoded cache {self.path} ({exc.strerror or exc}); free some "
                           f"space, set ZOO_CACHE_DIR to another folder, or drop --cache-decoded.") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def __getitem__(self, index: int) -> Any:
        if index in self.bad:
            raise RunError(self.bad[index])
        if self._array is None:  # opened lazily: each loader worker maps the file itself
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self.dataset.finish(torch.from_numpy(np.array(self._array[index])), index)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "_array", "shape", "path"):
            raise AttributeError(name)
        return getattr(self.dataset, name)  # image_shape, classes, split, task...
