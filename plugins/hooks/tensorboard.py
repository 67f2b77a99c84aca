"""Builtin hook: the run's scalars and sample grids as tensorboardX events, and its config and final
metrics as HParams."""

from __future__ import annotations

import functools
import time
from typing import Any

from zoo import hookimpl

HAND_OFF_SECS = 10.0  # log steps' scalars are handed to the event writer at most this often (and at the end)
HPARAMS_FOLDER = "hparams"  # under tensorboard/: the run's HParams session and final metrics
# how TensorBoard's HParams dashboard shows a run's end, by the status on_train_end gives (it has no status for
# a run stopped part way, which --resume goes on with: "unknown")
_SESSION_STATUS = {"done": "STATUS_SUCCESS", "interrupted": "STATUS_UNKNOWN", "failed": "STATUS_FAILURE"}


class TensorboardHook:
    """Writes losses, learning rates, compute efficiency, throughput and sample grids to ``tensorboard/``.

    Sample grids are written at epochs' ends as the samples hook saves them, sharing its budget
    (``zoo.engine.pictures.GridBudget``): an epoch's end has one only while the time spent on grids so
    far is at most ``GRID_SHARE`` (0.25%) of the time since training started, so the first epoch's end always
    has one and tiny epochs have one every so many. The time charged includes what tensorboardX's writer thread
    will take to checksum the image's event (in pure Python unless the optional ``crc32c`` module is
    installed: about 10 ms for a 60 KB grid on a CPU core), estimated from the event's size. The run's end
    always has one. Log steps' scalars go to the writer every ``HAND_OFF_SECS`` (10 s), evaluations' at once;
    events reach the disk within ``flush_secs`` (30 s) and when the run ends; a grid forces no flush of its own.

    When training ends (done, interrupted or failed) the run goes to TensorBoard's HParams dashboard, from
    ``tensorboard/hparams/``: config.json's ``config``, ``resolved`` and ``versions`` sections flattened
    (``config.lr``, ``resolved.model.version``; numbers, strings and booleans only), the last evaluation's
    metrics and how the run ended, so that ``tensorboard --logdir runs`` compares runs side by side.
    """

    def __init__(self) -> None:
        self.writer: Any = None
        self.grid_step: int | None = None  # the step of the last grid written: the run's end writes it once
        self.pending: list[tuple[int, dict[str, float], float]] = []  # (step, scalars, wall time) not yet written
        self.handed_at = 0.0  # when pending scalars were last handed to the writer (time.monotonic)

    @hookimpl
    def on_train_start(self, run):
        if run.rank != 0:  # one writer per run: rank 0 of a distributed run
            return
        import logging

        from tensorboardX import SummaryWriter
        # a non-finite value is written as it is (the engine itself says so): no stray unprefixed line for it
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        # resumed: TensorBoard drops what the first part logged after its checkpoint (logged again now)
        purge = run.step + 1 if run.step > 0 else None
        self.writer = SummaryWriter(logdir=str(run.run_dir / "tensorboard"), flush_secs=30, purge_step=purge)
        from zoo.engine.pictures import grid_budget
        grid_budget(run).start()

    @hookimpl
    def on_step_end(self, run, step, scalars):
        if self.writer is None:
            return
        self.pending.append((step, dict(scalars), time.time()))  # TensorBoard's wall-time axis: when logged
        if time.monotonic() - self.handed_at >= HAND_OFF_SECS:
            self._hand_off()

    def _hand_off(self) -> None:
        """The pending log steps' scalars to the writer, one event a log step, every ``HAND_OFF_SECS`` at most.

        tensorboardX's writer thread checksums each event in pure Python and takes the interpreter from
        training while it does: an event a scalar at every log step cost a small model about 1% of its
        time. Events reach the disk every ``flush_secs`` (30 s) anyway: a scalar shows at most 10 s later.
        """
        from tensorboardX.proto.summary_pb2 import Summary
        for step, scalars, walltime in self.pending:
            values = [Summary.Value(tag=f"train/{name}", simple_value=value) for name, value in scalars.items()]
            self.writer.file_writer.add_summary(Summary(value=values), step, walltime)
        self.pending.clear()
        self.handed_at = time.monotonic()

    @hookimpl
    def on_eval_end(self, run, step, metrics):
        if self.writer is None:
            return
        self._hand_off()  # the training scalars before it, in the file's order
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{name}", value, step)

    @hookimpl
    def on_log(self, run, step, name, value):
        if self.writer is None:
            return
        if isinstance(value, float):
            self.writer.add_scalar(f"log/{name}", value, step)
        else:
            self.writer.add_image(f"log/{name}", value, step)

    @hookimpl
    def on_epoch_end(self, run, epoch):
        if self.writer is None:
            return
        from zoo.engine.pictures import grid_budget
        budget = grid_budget(run)
        if budget.due(run.step):
            with budget.charged():
                written = self._add_grid(run)
            budget.charge(written * checksum_seconds_per_byte())  # the writer thread's share, after this call

    @hookimpl
    def on_train_end(self, run, status):
        if self.writer is None:
            return
        self._hand_off()
        if status != "failed":
            self._add_grid(run)
        self._add_hparams(run, status)
        self.writer.close()
        self.writer = None

    def _add_grid(self, run) -> int:
        """Adds the run's sample grid as an image event (once a step); the event's size in bytes, 0 if none."""
        if self.grid_step == run.step:  # the last epoch's end drew it already
            return 0
        self.grid_step = run.step
        grid = run.sample_grid()
        if grid is None:
            return 0
        from tensorboardX.summary import image
        summary = image("samples", grid)  # PNG-encoded here; the writer's thread checksums and writes it
        self.writer.file_writer.add_summary(summary, run.step)
        return summary.ByteSize()

    def _add_hparams(self, run, status: str) -> None:
        """The run as one HParams session, in ``tensorboard/hparams/``: its flattened config, its final metrics
        (the last evaluation's, as ``eval/<metric>`` scalars) and how it ended. TensorBoard keeps the first
        session info of a folder, so each end replaces the folder's events (a resumed run's earlier ones)."""
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        from zoo.engine.rundir import read_config
        from zoo.runs import comparable_config, last_evaluation

        config = {key: value for key, value in comparable_config(read_config(run.run_dir)).items()
                  if isinstance(value, (bool, int, float, str))}
        evaluation = last_evaluation(run.run_dir) or {"step": run.step, "metrics": {}}
        metrics = {f"eval/{name}": value for name, value in evaluation["metrics"].items() if value is not None}
        # no experiment summary: TensorBoard gathers every run's hparams itself, marking those that differ
        _, session_start, _ = hparams(config, metrics)
        folder = run.run_dir / "tensorboard" / HPARAMS_FOLDER
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        with SummaryWriter(logdir=str(folder)) as writer:
            for summary in (session_start, _session_end(status)):
                writer.file_writer.add_summary(summary, run.step)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, evaluation["step"])


@functools.lru_cache(maxsize=1)
def checksum_seconds_per_byte() -> float:
    """What tensorboardX's record checksum costs a byte in this process (timed once, on 16 KiB)."""
    from tensorboardX.crc32c import crc32c

    sample = bytes(range(256)) * 64
    began = time.perf_counter()
    crc32c(sample)
    return (time.perf_counter() - began) / len(sample)


def _session_end(status: str) -> Any:
    """The HParams summary saying how the run ended (tensorboardX's ``hparams`` says success, always)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    ending = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(_SESSION_STATUS[status])))
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                      content=ending.SerializeToString()))
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
