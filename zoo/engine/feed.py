"""Data feeding: a resumable epoch order, per-item seeds, the loader and device copies.

The order of an epoch is a permutation drawn from (seed, epoch), so a run
resumed at batch ``k`` of an epoch sees exactly the batches a straight run
would. Each item is loaded under a generator seeded from (seed, epoch, index)
(see ``zoo.data.item_rng``), so augmentation does not depend on which worker
loads it.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

import torch
from prefetch_generator import BackgroundGenerator
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from zoo.data import item_problem, items_fit, load_items
from zoo.engine.bad_items import BadItem, BadItems, BadSampleError, WrongItemError, as_bad_item
from zoo.engine.rng import derive_seed
from zoo.errors import first_line, part_name

__all__ = ["EpochOrder", "SeededItems", "collate_items", "make_loader", "leave_signals_to_main", "to_device",
           "DeviceFeed", "LoaderStream", "Prefetcher", "prefetching",
           # unreadable samples (zoo.engine.bad_items), documented here
           "BadItem", "BadItems", "BadSampleError", "WrongItemError", "as_bad_item"]


class EpochOrder(Sampler):
    """Yields ``(index, seed)`` keys for one epoch (``zoo.data.item_seed``), starting at a given position.

    The position counts samples of the whole epoch order (every process's). Interleaved shards
    (rank ``r`` of ``N`` takes every ``N``-th item from ``r``) make what ``k`` batches of ``B`` per process
    used the first ``k*B*N`` items of the order, so a run resumed with ``M`` processes takes the rest,
    ``rest[rank::M]``: no sample of the epoch twice, none skipped. With as many processes as before this
    is exactly each process's own share from batch ``k`` on.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, shard: tuple[int, int] = (0, 1)) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = shard
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch (its permutation) and how many samples of its whole order are done."""
        self.epoch, self.start = epoch, start

    def full_order(self) -> list[int]:
        """The epoch's whole index order, every process's share interleaved."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, "order", self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def order(self) -> list[int]:
        """This process's share of the epoch's index order (every ``world_size``-th, from ``rank``)."""
        return self.full_order()[self.rank::self.world_size]

    def remaining(self) -> list[int]:
        """This process's share of what is left of the epoch after ``start`` samples of the whole order."""
        return self.full_order()[self.start:][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, tuple[int | str, ...]]]:
        """``(index, seed parts)`` keys: item ``index``'s seed is ``derive_seed(*parts, index)`` (``zoo.data.item_seed``),
        hashed only where the item draws."""
        return zip(self.remaining(), itertools.repeat((self.seed, "item", self.epoch)))

    def __len__(self) -> int:
        return len(range(self.rank, max(self.size - self.start, 0), self.world_size))


class SeededItems(Dataset):
    """Loads ``dataset[index]`` under the item's own generator; a failure becomes a :class:`BadItem`.

    Failures travel as values so the main process reports them in one line
    (or skips them with ``--skip-bad-files``) whichever worker met them.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, Any]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, Any]]) -> list[Any]:
        """A batch's items (the DataLoader's batched fetch): loaded, then checked as a whole, each item on its
        own only where the batch's check does not pass."""
        items = load_items(self.dataset, keys, lambda index, exc: as_bad_item(index, exc, part_name(self.dataset)))
        try:
            if items_fit(self.dataset, items):
                return items
        except Exception:  # image_shape or classes themselves are broken: item_problem names it
            pass
        return [self._checked(index, item) for (index, _seed), item in zip(keys, items)]

    def _checked(self, index: int, item: Any) -> Any:
        """The item, or a :class:`BadItem` naming how it breaks the item contract."""
        if isinstance(item, BadItem):
            return item
        try:
            problem = item_problem(self.dataset, item)
        except Exception as exc:  # image_shape or classes themselves are broken
            problem = f"its image_shape or classes cannot be read ({type(exc).__name__}: {exc})"
        if problem is not None:
            return BadItem(index, f"dataset '{part_name(self.dataset)}' gave a wrong item {index}: {problem}. "
                                  f"The dataset plugin must return what zoo.data describes: fix its __getitem__.",
                           dataset_bug=True)
        return item

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def collate_items(items: list[Any]) -> tuple[Any, list[BadItem]]:
    """Collate the good samples of a batch; return them with the bad ones (``None`` if none was good)."""
    bad = [item for item in items if type(item) is BadItem]
    good = [item for item in items if type(item) is not BadItem] if bad else items
    if not good:
        return None, bad
    try:
        return default_collate(good), bad
    except (RuntimeError, TypeError) as exc:  # items that passed their checks but differ from one another
        return None, bad + [BadItem(-1, f"the dataset's items of one batch cannot be stacked ({first_line(exc)}): "
                                        f"every item must have the same shapes and types; fix the dataset "
                                        f"plugin's __getitem__.", dataset_bug=True)]


WORKER_TERM_GRACE_S = 30  # a worker given SIGTERM ends this long after, if the main process has not ended it
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def leave_signals_to_main(main_pid: int | None, _worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the main process, which saves and shuts them down (a SIGTERM sent to
    the whole process group, as job schedulers do, would otherwise kill them under the main process's save).

    A SIGTERM still ends a worker after a grace period (SIGALRM's default action): one the main process
    terminates because it is stuck in a slow read is not left behind. Nor is one whose main process was
    killed outright (``kill -9``): see :func:`end_with_main`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: signal.alarm(WORKER_TERM_GRACE_S))
    end_with_main(main_pid)


def end_with_main(main_pid: int | None) -> None:
    """A loader worker ends with its main process, even one killed while the worker started.

    torch's workers notice a dead main process by their parent changing, measured when the worker starts; a
    main process killed before that leaves the worker waiting forever on its queue (and holding the pipes its
    caller reads). On Linux the kernel sends this worker SIGKILL when its parent dies; one whose parent is no
    longer ``main_pid`` ends now (``None``: its parent is not the main process, see :func:`worker_parent`).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: torch's own check, every few seconds, remains
            pass
    if main_pid is not None and os.getppid() != main_pid:
        os._exit(0)


def worker_parent() -> int | None:
    """The pid a loader worker's parent has: this process, unless workers start from a forkserver (their parent,
    which ends with this process); read without fixing the start method."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return None if method == "forkserver" else os.getpid()


def make_loader(dataset: Dataset, batch_size: int, seed: int, workers: int, shuffle: bool,
                drop_last: bool, pin_memory: bool, shard: tuple[int, int] = (0, 1), *,
                items: Callable[[Dataset], Dataset] = SeededItems,
                collate: Callable[[list[Any]], tuple[Any, list[BadItem]]] = collate_items,
                ) -> tuple[DataLoader, EpochOrder]:
    """A DataLoader over seeded items, with its resumable order; it yields ``(batch, bad_items)``.

    ``items`` wraps the dataset for the workers and ``collate`` joins what they send
    (the finished samples by default).
    """
    _check_workers(workers)
    order = EpochOrder(len(dataset), seed, shuffle, shard)  # type: ignore[arg-type]
    generator = torch.Generator()  # keeps the loader from drawing on the global RNG
    generator.manual_seed(derive_seed(seed, "loader"))
    loader = DataLoader(
        items(dataset), batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collate,
        drop_last=drop_last, pin_memory=pin_memory, generator=generator,
        worker_init_fn=functools.partial(leave_signals_to_main, worker_parent()) if workers else None,
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    return loader, order


@functools.cache
def _check_workers(workers: int) -> None:
    """Say once, in one line, that more loader workers than usable CPUs will not load faster.

    torch's own warning (several lines, once per loader) is silenced in favour of this one.
    """
    warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cpus and os.environ.get("RANK", "0") == "0":  # said by one process of a job
        print(f"zoo: --workers {workers} is more than the {cpus} CPUs this process may use; loading gets no "
              f"faster past that and each worker costs memory (try --workers {cpus}).", file=sys.stderr)


def to_device(batch: Any, device: torch.device, non_blocking: bool, channels_last: bool = False) -> Any:
    """Copy a (nested) batch to the device; image batches optionally in channels-last layout."""
    if isinstance(batch, torch.Tensor):
        moved = batch.to(device, non_blocking=non_blocking)
        if channels_last and moved.dim() == 4 and moved.is_floating_point():
            moved = moved.contiguous(memory_format=torch.channels_last)
        return moved
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, non_blocking, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device, non_blocking, channels_last) for key, value in batch.items()}
    return batch


def _record(batch: Any, stream: Any) -> None:
    """Tell the caching allocator a side-stream copy is used on the current stream."""
    if isinstance(batch, torch.Tensor):
        batch.record_stream(stream)
    elif isinstance(batch, (list, tuple)):
        for item in batch:
            _record(item, stream)
    elif isinstance(batch, dict):
        for item in batch.values():
            _record(item, stream)


class DeviceFeed:
    """Yields ``(device_batch, bad_items)``; on CUDA the next batch is copied on a side stream.

    While the current step computes, the following batch already travels to the
    GPU, so the copy never stalls the step (pinned host memory makes it async).
    """

    def __init__(self, source: "Prefetcher | LoaderStream", device: torch.device, channels_last: bool = False,
                 assemble: Callable[[Any], tuple[Any, list[BadItem]]] | None = None) -> None:
        """``assemble`` turns what the loader sends into a batch on the device (decoding it there, say)."""
        self.source = source
        self.device = device
        self.channels_last = channels_last
        self.assemble = assemble
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: Any = None
        if self.stream is not None:
            self._preload()

    def _to_device(self, item: tuple[Any, list[BadItem]]) -> tuple[Any, list[BadItem]]:
        """The loader's batch on the device: assembled there, or copied."""
        batch, bad = self.assemble(item) if self.assemble is not None else item
        if batch is None:
            return None, bad
        return to_device(batch, self.device, True, self.channels_last), bad

    def _preload(self) -> None:
        try:
            item = next(self.source)
        except StopIteration:
            self._next = StopIteration
            return
        with torch.cuda.stream(self.stream):
            self._next = self._to_device(item)

    def __iter__(self) -> "DeviceFeed":
        return self

    def __next__(self) -> tuple[Any, list[BadItem]]:
        if self.stream is None:
            return self._to_device(next(self.source))
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        item = self._next
        if item is StopIteration:
            raise StopIteration
        _record(item[0], current)
        self._preload()
        return item

    def close(self) -> None:
        """Release the prefetch thread and the loader's workers."""
        self.source.close()


class LoaderStream:
    """Iterates a DataLoader in the calling thread; closing drops the iterator, which stops its workers."""

    def __init__(self, loader: DataLoader) -> None:
        self._iterator: Any = iter(loader)

    def __iter__(self) -> "LoaderStream":
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def close(self) -> None:
        """Release the loader's workers."""
        self._iterator = None


def prefetching(loader: DataLoader, workers: int, max_prefetch: int,
                device: torch.device | None = None) -> "Prefetcher | LoaderStream":
    """The loader behind a prefetching front: a background thread when the main process loads for a device.

    With worker processes the DataLoader already runs ahead (its workers and pin-memory
    thread); a second thread there would only add hand-offs of the interpreter lock to
    every step, which a GPU-bound loop pays for in launch delays. Training on the CPU, the
    step's own threads use the cores the thread would load on, and its hand-offs of the
    lock cost about a tenth of a small model's step (bench/step_overhead.py): the main
    process loads in turn, as a hand-written loop does.
    """
    ahead = workers == 0 and (device is None or device.type != "cpu")
    return Prefetcher(loader, max_prefetch=max_prefetch) if ahead else LoaderStream(loader)


class Prefetcher(BackgroundGenerator):
    """prefetch_generator's BackgroundGenerator that can be closed before the end of an epoch.

    Closing stops the thread and drops the loader iterator, which shuts its
    workers down, so a run that stops mid-epoch leaves nothing behind.
    """

    def __init__(self, loader: DataLoader, max_prefetch: int = 4) -> None:
        self._closed = threading.Event()
        super().__init__(iter(loader), max_prefetch=max_prefetch)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for item in self.generator:
                if not self._put((True, item)):
                    return
        except Exception as exc:  # handed to the consumer, as BackgroundGenerator does
            self._put((False, exc))
        finally:
            self._put((False, StopIteration))

    def close(self) -> None:
        """Stop prefetching and release the loader's workers."""
        self._closed.set()
        self.join(timeout=10)
        self.generator = None
