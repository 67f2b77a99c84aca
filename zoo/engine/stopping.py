"""Stopping a run: SIGINT/SIGTERM caught to save first, hooks' stop requests, and every process agreeing.

A first Ctrl-C or a SIGTERM asks the run to stop after its step (a checkpoint is saved); a
second Ctrl-C aborts at once. In a job of several processes, a stop asked anywhere stops
every process at the same step.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from zoo.engine import distributed
from zoo.engine.hooks import RunContext


class Stopper:
    """Whether the run should stop, and why: a signal received, or a hook's ``run.request_stop``."""

    def __init__(self, dist: distributed.DistContext, context: RunContext,
                 on_signal: Callable[[int], None]) -> None:
        self.dist = dist
        self.context = context
        self.on_signal = on_signal  # says that the run saves and stops (report)
        self.signal: int | None = None
        self._agreed_signal = False  # the processes' shared view of ``signal`` (distributed runs)

    def should_stop(self) -> bool:
        """A signal or a hook's stop request here, or (when distributed) on any process."""
        local = self.signal or (1 if self.context.stop_reason else 0)
        if self.dist.enabled:
            agreed = distributed.max_flag(local, self.dist)
            if agreed and not local:
                if agreed > 1:
                    self.signal = agreed
                else:
                    self.context.stop_reason = "another process asked the run to stop"
            local = agreed
            self._agreed_signal = agreed > 1
        return bool(local)

    def signalled(self) -> bool:
        """Whether a signal asks to stop, as every process agrees at the last check (or here, alone)."""
        return self._agreed_signal if self.dist.enabled else self.signal is not None

    @property
    def status(self) -> str:
        """How a run that got to its end ended: "interrupted" (a signal or a hook) or "done"."""
        return "interrupted" if (self.signal or self.context.stop_reason) else "done"

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        self.on_signal(signum)

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """While training: SIGINT/SIGTERM stop after the step; SIGXFSZ is an error we report, not a kill."""
        previous: dict[int, Any] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handle)
            previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
