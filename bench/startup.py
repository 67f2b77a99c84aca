"""Startup time of the ``zoo`` command: ``zoo --help`` and ``zoo list``.

Each command runs several times in a fresh interpreter (``python -m train_cli``);
the table shows the median and the fastest wall time, and whether the command
imported torch (checked with ``python -X importtime``). Always exits 0, even
when a command fails (the table says so): these are figures to read, not a test.

    python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (("--help",), ("list",))
HEAVY = ("torch", "torchvision")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}


def time_command(argv: list[str], runs: int) -> tuple[list[float], str]:
    """Wall seconds of ``runs`` fresh runs of ``argv`` (after one unmeasured warm-up), and an error."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [""]
            return times, f"exit {done.returncode}: {lines[-1]}"
        if i:  # the first run warms the file cache
            times.append(elapsed)
    return times, ""


def imported_heavy(args: tuple[str, ...]) -> list[str]:
    """Which of torch/torchvision ``zoo ARGS`` imports, from ``-X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "train_cli", *args], cwd=REPO,
                          env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    return [name for name in HEAVY if name in modules]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:>6.0f}ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per command (default 7)")
    runs = max(1, parser.parse_args().runs)

    print(f"zoo startup: {runs} fresh runs each after one warm-up; python {sys.version.split()[0]}")
    print(f"  {'command':<16}  {'median':>8}  {'min':>8}  torch imported")
    for args in COMMANDS:
        name = "zoo " + " ".join(args)
        times, error = time_command([sys.executable, "-m", "train_cli", *args], runs)
        if error:
            print(f"  {name:<16}  failed ({error})")
            continue
        heavy = imported_heavy(args)
        print(f"  {name:<16}  {_ms(statistics.median(times))}  {_ms(min(times))}  "
              f"{', '.join(heavy) if heavy else 'no'}")
    times, _ = time_command([sys.executable, "-c", "pass"], runs)
    print(f"  {'python -c pass':<16}  {_ms(statistics.median(times))}  {_ms(min(times))}  (baseline)")


if __name__ == "__main__":
    main()
    sys.exit(0)
