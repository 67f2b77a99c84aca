"""torch's own launcher (torchrun) with quiet endings.

A signal to the launcher or a worker that exits with an error ends in that exit
code; the workers have already printed their one-line messages, so torchrun's
tracebacks would only repeat them.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``torch.distributed.run`` on ``sys.argv`` and exit with the job's code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())  # by rank: rank 0's code is the job's
        sys.exit(next((f.exitcode for _, f in failures if f.exitcode > 0), 1))


if __name__ == "__main__":
    main()
