"""Startup time of the ``zoo`` command: ``zoo --help``, ``zoo list`` and ``zoo info dcgan``.

Each command runs several times in a fresh interpreter (``python -m train_cli``);
the table shows the median and the fastest wall time, and whether the command
imported torch (checked with ``python -X importtime``). ``zoo info dcgan`` runs
cold (an empty description cache each time: it imports torch and fills the cache)
and warm (the cache filled). The cache lives in a temporary folder (``ZOO_CACHE_DIR``),
never the user's. Always exits 0, even when a command fails (the table says so):
these are figures to read, not a test.

    python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
# (label, arguments, whether each run starts from an empty description cache)
COMMANDS = (("zoo --help", ("--help",), False), ("zoo list", ("list",), False),
            ("zoo info dcgan cold", ("info", "dcgan"), True), ("zoo info dcgan warm", ("info", "dcgan"), False))
HEAVY = ("torch", "torchvision")


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    if cache is not None:
        env["ZOO_CACHE_DIR"] = str(cache)
    return env


def time_command(argv: list[str], runs: int, cache: Callable[[], Path] | None = None) -> tuple[list[float], str]:
    """Wall seconds of ``runs`` fresh runs of ``argv`` (after one unmeasured warm-up), and an error;
    ``cache`` gives each run its ``ZOO_CACHE_DIR``."""
    times = []
    for i in range(runs + 1):
        env = _env(cache() if cache else None)
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [""]
            return times, f"exit {done.returncode}: {lines[-1]}"
        if i:  # the first run warms the file cache
            times.append(elapsed)
    return times, ""


def imported_heavy(args: tuple[str, ...], cache: Path) -> list[str]:
    """Which of torch/torchvision ``zoo ARGS`` imports, from ``-X importtime``, with ``cache`` as ZOO_CACHE_DIR."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "train_cli", *args], cwd=REPO,
                          env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    print(f"  {'command':<20}  {'median':>8}  {'min':>8}  torch imported")
    with tempfile.TemporaryDirectory(prefix="zoo-startup-") as folder:
        numbers = itertools.count()
        for name, args, cold in COMMANDS:
            cache = (lambda: Path(folder, f"cold-{next(numbers)}")) if cold else (lambda: Path(folder, "warm"))
            times, error = time_command([sys.executable, "-m", "train_cli", *args], runs, cache)
            if error:
                print(f"  {name:<20}  failed ({error})")
                continue
            heavy = imported_heavy(args, cache())
            print(f"  {name:<20}  {_ms(statistics.median(times))}  {_ms(min(times))}  "
                  f"{', '.join(heavy) if heavy else 'no'}")
    times, _ = time_command([sys.executable, "-c", "pass"], runs)
    print(f"  {'python -c pass':<20}  {_ms(statistics.median(times))}  {_ms(min(times))}  (baseline)")


if __name__ == "__main__":
    main()
    sys.exit(0)
