"""Seeding and capture/restore of every random number generator a run touches."""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterable, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, torch and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def derive_seed(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from several parts (run seed, epoch, index...)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ItemSeed:
    """``derive_seed(*parts, index)``, hashed only when first used (as an int): most items of most datasets
    draw nothing, so a loader's keys cost no hashing for them."""

    __slots__ = ("parts", "index", "_value")

    def __init__(self, parts: tuple[int | str, ...], index: int) -> None:
        self.parts, self.index, self._value = parts, index, None

    def __int__(self) -> int:
        if self._value is None:
            self._value = derive_seed(*self.parts, self.index)
        return self._value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return int(self) == int(other) if isinstance(other, (int, ItemSeed)) else NotImplemented

    def __hash__(self) -> int:
        return hash(int(self))

    def __repr__(self) -> str:
        return f"ItemSeed({int(self)})"

    def __getstate__(self) -> tuple:
        return self.parts, self.index, self._value

    def __setstate__(self, state: tuple) -> None:
        self.parts, self.index, self._value = state


def item_seeds(indices: Iterable[int], *parts: int | str) -> Iterator[ItemSeed]:
    """The seeds ``derive_seed(*parts, index)`` of a loader's items, each hashed only if its item draws."""
    for index in indices:
        yield ItemSeed(parts, index)


def capture() -> dict[str, Any]:
    """The state of every generator, as tensors and JSON-ready values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_initialized():  # a run on the CPU leaves CUDA unstarted (and its generators unused)
        state["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return state


def restore(state: dict[str, Any]) -> None:
    """Put every generator back to a captured state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
