"""A decoded-image cache: decode once, keep uint8 images at the training size in a memory-mapped file.

A dataset opts in by offering ``decode(index)`` (the deterministic, expensive part of
an item, as a uint8 ``(C, H, W)`` tensor), ``finish(decoded, index)`` (the rest:
random augmentation, range, label) and ``cache_key()`` (what the decoded images
depend on: files, sizes, transforms). A change in any of those gives a new key, so
the cache is rebuilt rather than served stale. The build decodes in ``workers``
loader processes (0: in this process) and writes the file in this one. A dataset whose items
are cut from fewer, larger images says so (``decoded_shapes``, ``decoded_index``: see
``cache_layout.py``), and each of those images is decoded and stored once.

With ``fill_on_read`` there is no separate build: the first pass over the data
decodes each item where it is read (in the loader's workers) and stores it in a
shared partial file with a flag per item; ``finalize`` then decodes what the pass
left out and publishes the file. So the first epoch costs one decode per
image, as without a cache, and a run stopped half-way keeps what it decoded.

A published file is checked when opened: its size against its shape, its record of
unreadable items (``<file>.bad.json``, written by every build) against its length. One that does not match
(cut short by a full disk, say) is named in one line, removed, and rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from zoo.engine.bad_items import as_bad_item
from zoo.engine.cache_layout import Layout
from zoo.engine.feed import end_with_main, worker_parent
from zoo.engine.rundir import write_text_atomic
from zoo.errors import RunError, ZooError

BUILD_BATCH = 32  # images a build worker decodes and sends back at once
FILLED = 1  # an item's flag in the partial file once its decoded image is stored
# what a folder answers when it takes no new files (permissions, read-only, not a folder)
FOLDER_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR})


def default_root() -> Path:
    """``$ZOO_CACHE_DIR``, else ``~/.cache/zoo/decoded``."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo" / "decoded")


def _say(message: str) -> None:
    """One line on stderr that leaves a progress bar intact."""
    tqdm.write(message, file=sys.stderr)


def _size_problem(path: Path, expected: int) -> str | None:
    """``"N bytes, expected M"`` when the file at ``path`` is not ``expected`` bytes long, else ``None``."""
    size = path.stat().st_size
    return None if size == expected else f"{size} bytes, expected {expected}"


def supports_cache(dataset: Any) -> bool:
    """True when the dataset offers decode, finish and cache_key."""
    return all(callable(getattr(dataset, name, None)) for name in ("decode", "finish", "cache_key"))


class _Decoded(Dataset):
    """``(index, dataset.decode(index))`` for the build; a failure comes back as its one-line message, not raised.

    Returning the message keeps one unreadable file (a zoo error, or the OSError, ValueError
    or SyntaxError image decoders raise) from stopping the build's loader workers, or passing
    for a failure to write the cache. Other exceptions are bugs: they stop the build, unrecorded.
    """

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            return index, self.dataset.decode(index)
        except (ZooError, OSError, ValueError, SyntaxError) as exc:  # what decoders raise for a bad file
            return index, as_bad_item(index, exc).message  # reported when used (or skipped: --skip-bad-files)

    def __len__(self) -> int:
        return self.count


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], Any, dict[int, str]]:
    """Stack a batch's decoded images where they share a shape (one tensor to send, not many); set bad ones apart."""
    good = [(index, image) for index, image in items if isinstance(image, torch.Tensor)]
    bad = {index: message for index, message in items if isinstance(message, str)}
    images = [image for _, image in good]
    if images and len({tuple(image.shape) for image in images}) == 1:
        images = torch.stack(images)
    return [index for index, _ in good], images, bad


def _start_build_worker(main_pid: int | None, _worker_id: int) -> None:
    """Build workers leave Ctrl-C to the main process, which removes the partial file; they end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_main(main_pid)


class DecodedCache(Dataset):
    """Serves a dataset from its decoded images, built into ``root`` on first use by ``workers`` processes."""

    def __init__(self, dataset: Any, root: Path, *, workers: int = 0, fill_on_read: bool = False,
                 decoder: str | None = None, origin: str | None = None) -> None:
        """``decoder`` names a decoding other than ``dataset.decode`` that fills the cache (a GPU decoder);
        ``origin`` the dataset's plugin and version (``plugin:name@1.2``), so a new version rebuilds its caches.
        """
        self.dataset = dataset
        self.workers = workers
        extras = [extra for extra in (decoder, origin) if extra is not None]
        described = [dataset.cache_key(), *extras] if extras else dataset.cache_key()
        key = hashlib.sha256(json.dumps(described, default=str).encode()).hexdigest()[:24]
        self.layout = Layout.of(dataset)  # one decoded image per item, or the fewer images items are cut from
        self.path = Path(root) / f"{key}-{self.layout.name}.u8"
        self.bad_path = self.path.with_name(self.path.name + ".bad.json")
        self.partial_path = self.path.with_name(f".{self.path.name}.partial")
        self.flags_path = self.path.with_name(f".{self.path.name}.filled")
        self._array: np.memmap | None = None
        self._flags: np.memmap | None = None
        self.bad: dict[int, str] = {}
        self.complete = self._check_published()
        if self.complete:
            return
        if fill_on_read:
            self._prepare_partial()
        else:
            self._build(range(self.layout.count), self._create(self.path.with_name(f".{self.path.name}.{os.getpid()}")))

    def _read_published(self) -> str | None:
        """Load the published file's record of unreadable items; why the two cannot be served, else ``None``.

        The file holds raw images only, so its size and the record are all there is to check.
        """
        size_problem = _size_problem(self.path, self.layout.nbytes)
        if size_problem:
            return size_problem
        if not self.bad_path.exists():  # every build writes one, {} when all files were read
            return f"its record of unreadable files {self.bad_path.name} is missing"
        try:
            record = json.loads(self.bad_path.read_text())
            bad = {int(k): v for k, v in record.items()}
        except (ValueError, AttributeError):  # not JSON, not an object, a key not a number
            return f"its record of unreadable files {self.bad_path.name} does not parse"
        if not all(0 <= k < self.layout.count and isinstance(v, str) for k, v in bad.items()):
            return f"its record of unreadable files {self.bad_path.name} does not fit its {self.layout.count} images"
        self.bad = bad
        return None

    def _check_published(self, *, locked: bool = False) -> bool:
        """Whether a sound published file is there (its record loaded); a damaged one is named and removed.

        ``locked``: the caller holds the cache's lock; otherwise it is taken to remove a damaged file,
        so a run that has just rebuilt it keeps its file. A sound file is read without the lock.
        """
        if not self.path.exists():
            return False
        problem = self._read_published()
        if problem is None:
            return True
        if not locked:
            try:
                with self._locked():
                    return self._check_published(locked=True)
            except OSError as exc:
                raise RunError(f"decoded cache {self.path} is damaged ({problem}) and cannot be removed "
                               f"({exc.strerror or exc}); remove it, set ZOO_CACHE_DIR to a writable folder, "
                               f"or drop --cache-decoded.") from None
        _say(f"zoo: decoded cache {self.path} is damaged ({problem}); rebuilding it.")
        self.path.unlink(missing_ok=True)  # first: the record never outlives the images it describes
        self.bad_path.unlink(missing_ok=True)
        self.bad = {}
        return False

    def _write_error(self, exc: OSError) -> RunError:
        """The one-line error for a failed write: the folder refused it (permissions), or space ran out."""
        if exc.errno in FOLDER_REFUSALS:
            return self._folder_error(exc)
        return RunError(f"could not write the decoded cache {self.path} ({exc.strerror or exc}); free some "
                        f"space, set ZOO_CACHE_DIR to another folder, or drop --cache-decoded.")

    def _folder_error(self, exc: OSError) -> RunError:
        """The one-line error for a cache folder that cannot be made or written in."""
        return RunError(f"cannot use {self.path.parent} as the decoded-image cache folder ({exc.strerror or exc}); "
                        f"set ZOO_CACHE_DIR to a writable folder, or drop --cache-decoded.")

    def _make_folder(self) -> None:
        """Create the cache's folder; a RunError names it when it cannot be one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._folder_error(exc) from None

    def _create(self, tmp: Path) -> np.memmap:
        """A new zero-filled image file of the cache's shape at ``tmp``."""
        self._make_folder()
        try:
            return np.memmap(tmp, dtype=np.uint8, mode="w+", shape=self.layout.array_shape)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_error(exc) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cache's lock file: runs sharing a cache create and publish it one at a time."""
        self._make_folder()
        with contextlib.ExitStack() as stack:
            try:
                lock = stack.enter_context(open(self.path.with_name(f".{self.path.name}.lock"), "a"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError as exc:  # a folder that takes no new files (permissions, read-only)
                raise self._folder_error(exc) from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare_partial(self) -> None:
        """Create (or keep, from an earlier or a parallel run) the partial file and its flags."""
        with self._locked():
            if self._check_published(locked=True):  # another run published it meanwhile
                self.complete = True
                return
            if self.partial_path.exists() and self.flags_path.exists():
                problem = _size_problem(self.partial_path, self.layout.nbytes) or \
                    _size_problem(self.flags_path, self.layout.count)
                if problem is None:
                    return
                _say(f"zoo: partly filled decoded cache {self.partial_path} is damaged ({problem}); "
                     f"starting it again.")
            try:
                self._create(self.partial_path).flush()
                np.memmap(self.flags_path, dtype=np.uint8, mode="w+", shape=(self.layout.count,)).flush()
            except OSError as exc:
                self.partial_path.unlink(missing_ok=True)
                raise self._write_error(exc) from None

    def _build(self, indices: Any, array: np.memmap, keep_on_failure: bool = False) -> None:
        """Decode ``indices`` with the build's workers into ``array``, then publish it as the cache."""
        tmp = Path(array.filename)
        bad: dict[int, str] = {}
        # a first pass leaves a few items at most: starting worker processes for them costs more than it saves
        workers = self.workers if len(indices) > self.workers * BUILD_BATCH else 0
        loader = DataLoader(Subset(_Decoded(self.dataset, self.layout.count), [int(i) for i in indices]),
                            batch_size=BUILD_BATCH,
                            num_workers=workers, collate_fn=_collate,
                            worker_init_fn=functools.partial(_start_build_worker, worker_parent()) if workers else None,
                            generator=torch.Generator())  # leaves the global RNG (model init) untouched
        try:
            with tqdm(total=len(indices), desc=f"decoding {self.dataset.split} once", unit="img",
                      file=sys.stderr, mininterval=0.5, leave=False, disable=not len(indices)) as progress:
                for done, images, failed in loader:
                    if done:
                        self.layout.write(array, done, images)
                    bad.update(failed)
                    progress.update(len(done) + len(failed))
            array.flush()
            del array
            # always written, {} for none, whole or not at all: a missing or cut short record shows damage
            write_text_atomic(self.bad_path, json.dumps(bad))
            os.replace(tmp, self.path)
        except BaseException as exc:
            if not keep_on_failure:  # a partial file keeps what it has for the next run
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._write_error(exc) from None
            raise
        self.bad = bad
        self.complete = True

    def finalize(self) -> None:
        """Decode what the first pass left out (the last partial batch, say) and publish the cache.

        A no-op once complete. Items marked unreadable are decoded again here, so the
        cache records their errors as a full build would.
        """
        if self.complete:
            return
        self._array = self._flags = None
        with self._locked():
            if self._check_published(locked=True):  # another run sharing the cache published it first
                self.complete = True
                return
            array = np.memmap(self.partial_path, dtype=np.uint8, mode="r+", shape=self.layout.array_shape)
            self._build(self.missing(), array, keep_on_failure=True)
            self.flags_path.unlink(missing_ok=True)

    def _open(self) -> None:
        """Map the files in this process (each loader worker maps them itself)."""
        if self.complete:  # sound when this run opened it: cut short since?
            problem = _size_problem(self.path, self.layout.nbytes)
            if problem:
                raise RunError(f"decoded cache {self.path} changed during this run ({problem}); "
                               f"run again to rebuild it.")
        elif self._check_published():  # another run sharing the cache published it: just checked
            self.complete = True
        if self.complete:
            self._array = np.memmap(self.path, dtype=np.uint8, mode=self.layout.published_mode,
                                    shape=self.layout.array_shape)
        else:
            self._array = np.memmap(self.partial_path, dtype=np.uint8, mode="r+", shape=self.layout.array_shape)
            self._flags = np.memmap(self.flags_path, dtype=np.uint8, mode="r+", shape=(self.layout.count,))

    def stored(self, index: int) -> torch.Tensor | None:
        """Decoded image ``index`` if the cache has it, else ``None``; RunError for a known bad file."""
        if self._array is None:
            self._open()  # first: switching to a file another run published loads its record of bad files
        if index in self.bad:
            raise RunError(self.bad[index])
        if self._flags is not None and self._flags[index] != FILLED:
            return None
        return self.layout.read(self._array, index)

    def store(self, indices: list[int], decoded: torch.Tensor | list[torch.Tensor]) -> None:
        """Keep decoded uint8 images (``(N, C, H, W)``, or a list) of ``indices`` in the partial file (a no-op once
        complete)."""
        if self._array is None:
            self._open()
        if self._flags is None:
            return
        self.layout.write(self._array, indices, decoded)
        self._flags[indices] = FILLED  # after the images: a torn write leaves them to decode again

    def missing(self) -> list[int]:
        """Indices the partial file does not hold yet (none once complete)."""
        if self.complete:
            return []
        flags = np.memmap(self.flags_path, dtype=np.uint8, mode="r", shape=(self.layout.count,))
        return np.flatnonzero(flags != FILLED).tolist()

    def __getitem__(self, index: int) -> Any:
        source = self.dataset.decoded_index(index) if hasattr(self.dataset, "decoded_index") else index
        decoded = self.stored(source)
        if decoded is None:
            decoded = self.dataset.decode(source)  # a bad file raises here, as without the cache
            self.store([source], [decoded])
        return self.dataset.finish(decoded, index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = state["_flags"] = None
        return state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "_array", "_flags", "layout", "path", "complete"):
            raise AttributeError(name)
        return getattr(self.dataset, name)  # image_shape, classes, split, task...
