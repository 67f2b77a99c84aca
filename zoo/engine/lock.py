"""One training process per run folder: a lock file naming its owner, stale ones taken over.

The lock records the owner's pid, host and process start time. A lock whose
process is gone (killed with ``kill -9``, say) is stale and taken over with a
notice; loader workers that outlive their parent for a few seconds do not
matter, since only the main process's pid is recorded.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from zoo.errors import UsageError

LOCK_NAME = "train.lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (tells a live owner from a reused pid), if known."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_running(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot check another machine: assume it is running
    pid = int(owner.get("pid", -1))
    if pid <= 0 or not _alive(pid):
        return False
    recorded = owner.get("start_time")
    return recorded is None or _start_time(pid) in (None, recorded)


def held(run_dir: Path) -> bool:
    """Whether a running process holds ``run_dir``'s lock (one a killed process left does not count)."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(owner, dict) and _owner_running(owner)


class RunLock:
    """Held while ``zoo train`` writes into a run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "start_time": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise a usage error naming the process that holds it.

        The lock file is created with O_EXCL, so of two processes starting at
        once only one wins; a stale lock is first renamed away (atomic too).
        """
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.owner))
            self.held = True
            return
        raise UsageError(f"could not take the lock {self.path}; another zoo train is starting there.")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            owner = {}
        if owner and _owner_running(owner):
            raise UsageError(
                f"{self.path.parent} is in use by another zoo train (pid {owner.get('pid')} on "
                f"{owner.get('host')}, since {owner.get('since')}); wait for it or stop it "
                f"(delete {self.path} only if you are sure it is gone).")
        stale = self.path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, stale)  # only one process can move the stale lock away
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)
        print(f"zoo: taking over a stale lock of {self.path.parent} (pid {owner.get('pid', '?')} "
              f"is no longer running).", file=sys.stderr)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
