"""torch's own launcher (torchrun) with quiet endings.

A signal to the launcher or a worker that exits with an error ends in that exit
code; the workers have already printed their one-line messages, so torchrun's
tracebacks and log lines would only repeat them. A worker killed by a signal
printed nothing: that is said in one line here.
"""

from __future__ import annotations

import logging
import signal
import sys


def main() -> None:
    """Run ``torch.distributed.run`` on ``sys.argv`` and exit with the job's code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its W/E lines repeat the workers'
    try:
        torchrun()
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())  # by rank: rank 0's code is the job's
        if not any(failure.exitcode > 0 for _, failure in failures):  # no worker said why: a signal ended it
            _say_killed(failures)
        sys.exit(next((f.exitcode for _, f in failures if f.exitcode > 0), 1))


def _say_killed(failures: list) -> None:
    """Name the worker a signal killed (not one torchrun itself then stopped with SIGTERM)."""
    rank, failure = next(((rank, f) for rank, f in failures if f.exitcode != -signal.SIGTERM), failures[0])
    number = -failure.exitcode
    name = signal.Signals(number).name if number in {s.value for s in signal.Signals} else f"signal {number}"
    print(f"zoo: error: the process of rank {rank} was killed by {name}; the run can go on from its last "
          f"checkpoint with --resume.", file=sys.stderr)


if __name__ == "__main__":
    main()
