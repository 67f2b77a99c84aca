"""The training data, epoch after epoch: each step's micro-batches on the device, and a bar per epoch.

An epoch starts where the training state's position says (a resumed run goes on mid-epoch
with the same order), prefetches batches in a background thread and copies them to the
device ahead of the step. Unreadable samples are counted or stop the run (``BadItems``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from zoo.engine.feed import DeviceFeed, prefetching
from zoo.engine.progress import Window
from zoo.engine.state import TrainState


class EpochFeed:
    """Hands out each step's batches; opens the next epoch's loader when the last one is used up."""

    def __init__(self, run: Any, state: TrainState, window: Window) -> None:
        self.loader, self.order, self.device_decoder = run.loader, run.order, run.device_decoder
        self.config, self.device, self.speed = run.config, run.device, run.speed
        self.steps_per_epoch, self.show = run.schedule.steps_per_epoch, run.dist.is_main
        self.epochs = -(-run.schedule.total_steps // self.steps_per_epoch)  # the last may be partial
        self.state, self.window = state, window
        self.feed: DeviceFeed | None = None
        self.bar: tqdm | None = None

    def next_step(self) -> list[Any]:
        """The next step's micro-batches (fewer where samples were unreadable and skipped)."""
        if self.feed is None:
            self._open()
        started = time.perf_counter()
        batches = []
        for _ in range(self.config.accumulate):
            batch, bad = next(self.feed)
            self.state.bad_items.check(bad)
            if batch is not None:
                batches.append(batch)
        self.window.waited += time.perf_counter() - started
        return batches

    def stepped(self) -> None:
        """A step was taken: the bar moves."""
        self.bar.update(1)

    def _open(self) -> None:
        config, state = self.config, self.state
        self.order.set_epoch(state.epoch, start=state.samples)
        self.feed = DeviceFeed(prefetching(self.loader, config.workers, max(2, 2 * config.accumulate), self.device),
                               self.device, self.speed.channels_last, assemble=self.device_decoder)
        self.bar = tqdm(total=self.steps_per_epoch, initial=state.position // config.accumulate,
                        desc=f"epoch {state.epoch + 1}/{self.epochs}", unit="step", dynamic_ncols=True, leave=True,
                        file=sys.stderr, mininterval=0.5, disable=not self.show)
        self.window.start_clock(state.step)

    def close(self) -> None:
        """End the epoch's loader and bar (at an epoch's end, and when the run stops)."""
        if self.feed is not None:
            self.feed.close()
            self.bar.close()
        self.feed = self.bar = None
