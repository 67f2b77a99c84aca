"""The run's status, ``status.json``: running, done, interrupted or failed, with its steps, best and times.

Rank 0 of ``zoo train`` writes it atomically when training starts, after each evaluation and when
training ends (:func:`recorded`, :func:`evaluated`); each write refreshes the run's model card
(``README.md``, :mod:`zoo.card`). :func:`read_status` gives it back to ``zoo runs``: a "running"
record whose ``train.lock`` no running process holds is a run that crashed (killed, out of memory),
given as "failed" with ``crashed``. Imports no torch.
"""

from __future__ import annotations

import datetime
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from zoo.engine import lock
from zoo.engine.rundir import write_json
from zoo.errors import UsageError

STATUS_NAME = "status.json"
STATUSES = ("running", "done", "interrupted", "failed")


def now() -> str:
    """The time as status.json records it: ISO 8601, local, with its UTC offset, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


@contextmanager
def recorded(run: Any, outcome: Any) -> Iterator[None]:
    """status.json says "running" while the block trains; after it, how training ended: ``outcome.status``
    ("done" or "interrupted") where the block ended normally, "failed" on an error, "interrupted" when a
    second Ctrl-C aborted it."""
    _write(run, "running", started=now())
    ending = None
    try:
        yield
    except KeyboardInterrupt:
        ending = "interrupted"
        raise
    except BaseException:
        ending = "failed"
        raise
    finally:
        _write(run, ending or outcome.status, ended=now())


def evaluated(run: Any) -> None:
    """An evaluation is done (the best may have moved): status.json and the card say so."""
    _write(run, "running")


def _write(run: Any, status: str, started: str | None = None, ended: str | None = None) -> None:
    """Write status.json (rank 0), then the card; a folder that cannot be written is said, not raised (the
    checkpoints say what the run did)."""
    if not run.dist.is_main:
        return
    from zoo.card import write_card  # reads the checkpoints' files: only where a run writes

    path = run.run_dir / STATUS_NAME
    if started is None:
        started = (read_recorded(run.run_dir) or {}).get("started")
    state = run.state
    document = {"status": status, "step": state.step, "planned_steps": run.schedule.total_steps,
                "epoch": state.epoch, "best": _best(state.best, run.best_metric),
                "stop_reason": run.context.stop_reason, "started": started, "updated": now(), "ended": ended}
    try:
        write_json(path, document, report=True)
        write_card(run.run_dir)
    except (OSError, UsageError) as exc:  # a full disk; a config.json gone bad (the card reads it)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        run.report.status_not_written(run.run_dir, reason)


def _best(best: dict[str, Any] | None, metric: tuple[str, str] | None) -> dict[str, Any] | None:
    """The best evaluation as status.json records it: metric, direction ("max"/"min"), value and step."""
    if not best:
        return None
    mode = metric[1] if metric and metric[0] == best["metric"] else None
    return {"metric": best["metric"], "mode": mode, "value": best["value"], "step": best["step"]}


def read_recorded(run_dir: Path) -> dict[str, Any] | None:
    """status.json as the run last wrote it, taken at its word (for the run itself, its card), or None: none
    there, unreadable, or not one zoo wrote."""
    try:
        document = json.loads((Path(run_dir) / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("status") in STATUSES else None


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """status.json for someone looking at the run from outside: None for a run made before zoo recorded it;
    a "running" one whose lock no running process holds is "failed" with ``crashed: True``."""
    document = read_recorded(run_dir)
    if document is None or document["status"] != "running" or lock.held(run_dir):
        return document
    again = read_recorded(run_dir)  # the run may have ended (and let go of its lock) since the first read
    if again is not None and again["status"] != "running":
        return again
    return {**document, "status": "failed", "crashed": True}
