"""One training step: the recipe's forwards, a backward and an optimizer step per yielded loss.

For each micro-batch (``--accumulate``), ``training_step`` yields ``(optimizer name, loss)``
pairs; each loss is scaled (mixed precision) and back-propagated into its optimizer's
parameters only; on the last micro-batch that backward also averages the gradients across
processes (DistributedDataParallel, ``data_parallel.py``), they are clipped (``--clip-grad``)
and the optimizer steps. A later yield sees the networks an earlier
one just updated (a GAN's discriminator, then its generator). The step runs eagerly, as a
replayed CUDA graph (``--cuda-graph``), or compiled (``--compile``, eager where the compiler
fails on the first step). The optimizers, schedulers and grad scaler are this module's state.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.nn.utils import clip_grad_norm_

from zoo.engine import contracts, data_parallel, distributed, graphed, optim, report, speed
from zoo.engine.feed import to_device
from zoo.engine.precision import Precision
from zoo.engine.report import Report
from zoo.engine.state import TrainState
from zoo.errors import ZooError, first_line

Losses = dict[str, torch.Tensor]
_DONE = object()  # training_step has nothing more to yield


def host_copy(tree: Any) -> Any:
    """A copy of a state dict with its tensors in host memory (device memory stays free)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {key: host_copy(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(host_copy(item) for item in tree)
    return copy.deepcopy(tree)


class StepRunner:
    """Runs training steps; owns the optimizers, their schedulers and the grad scaler."""

    def __init__(self, run: Any, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                 precision: Precision, reporter: Report, state: TrainState) -> None:
        self.recipe, self.loss_fn, self.device = run.recipe, run.loss_fn, run.device
        self.config, self.speed, self.dist = run.config, run.speed, run.dist
        self.model = run.plan.model.name
        self.optimizers, self.schedulers, self.precision = optimizers, schedulers, precision
        self.report, self.state = reporter, state
        self.params = {name: [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
                       for name, opt in optimizers.items()}
        # each optimizer's backward ``inputs``: None where it trains every trainable parameter, as a plain
        # backward reaches the same parameters without the cost of ``inputs`` (about 0.4% of a small model's step)
        everything = {id(p) for module in (self.recipe, self.loss_fn) if module is not None
                      for p in module.parameters() if p.requires_grad}
        self.backward_inputs = {name: None if {id(p) for p in group} == everything else group
                                for name, group in self.params.items()}
        # the networks in DDP with several processes (a ``data_parallel.DataParallel`` set by ``assemble``)
        self.parallel: Any = data_parallel.SingleProcess()
        self.graph: graphed.StepGraph | None = None
        self._compiled_step_ran = False
        self._said_no_loss = False  # a step that yielded no loss was said (once a run)

    def use_graph(self, blocker: str | None) -> None:
        """Replay steps as a CUDA graph when --cuda-graph asks and nothing blocks it (``blocker`` says what)."""
        if self.speed.cuda_graph and blocker:
            self.report.no_cuda_graph(blocker)
            self.speed.cuda_graph = False
        graphed.set_capturable(self.optimizers, self.device, self.speed.cuda_graph)  # whatever a checkpoint saved
        if self.speed.cuda_graph:
            self.precision.cache_casts = False
            self.graph = graphed.StepGraph(self._run, self.optimizers, self.report.say,
                                           on_failure=self.recipe.pop_logs)

    def step(self, batches: list[Any]) -> Losses | None:
        """One step over its micro-batches: the step's losses and logged figures, or None when skipped."""
        optim.set_step_lrs(self.schedulers, self.state.step)  # a per-step schedule or warm-up: this step's rates
        if not batches:  # every sample of the step was unreadable (--skip-bad-files)
            if self.dist.enabled:
                raise report.whole_step_unreadable(self.state.step + 1, self.dist.rank)
            return None
        return self.graph(batches) if self.graph is not None else self._run(batches)

    def step_schedulers(self) -> None:
        """An epoch ended: every learning-rate scheduler steps."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    def _run(self, batches: list[Any]) -> Losses | None:
        """``compute``, except that a compiled run's first step may fall back to eager."""
        if self.speed.compile and not self._compiled_step_ran:
            return self._first_compiled_step(batches)
        return self.compute(batches)

    def _first_compiled_step(self, batches: list[Any]) -> Losses | None:
        """The first step of a compiled run; where the compiler fails on it, uncompile and step eagerly.

        Weights and optimizer states are put back as they were before the step, so an
        update made before the failure (a GAN's discriminator) does not happen twice.
        """
        weights, optimizers = host_copy(self.recipe.state_dict()), host_copy(self.optimizer_states())
        try:
            values = self.compute(batches)
        except (ZooError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a compiler bug on this model: the eager model still trains
            self.report.compile_failed(first_line(exc))
            speed.uncompile(self.recipe)
            self.speed.compile = False
            self.recipe.pop_logs()
            self.recipe.load_state_dict(weights)
            for name, opt in self.optimizers.items():
                opt.load_state_dict(optimizers[name])
            values = self.compute(batches)
        self._compiled_step_ran = True
        return values

    def compute(self, batches: list[Any]) -> Losses | None:
        """Run a step's forwards, backwards and optimizer updates; return its losses and logged figures.

        With --skip-nonfinite, a non-finite loss skips its own update and the rest of the step
        (updates yielded before it have already happened) and returns None.
        """
        values: Losses = {}
        self._zero_grad()
        with self.parallel.in_step():
            stepped = yielded = False
            for index, batch in enumerate(batches):
                last = index == len(batches) - 1
                with self.parallel.micro_batch(last):
                    outcome = self._micro_batch(batch, len(batches), last, values, stepped)
                if outcome is None:  # a non-finite loss: the rest of the step is skipped
                    return None
                stepped, yielded = stepped or outcome[0], yielded or outcome[1]
        if batches and not yielded and not self._said_no_loss:  # fine once in a while; always is a bug
            self._said_no_loss = True
            self.report.no_loss_yielded(self.model, self.state.step + 1)
        self.precision.scaler.update()
        return values

    def _micro_batch(self, batch: Any, parts: int, last: bool, values: Losses,
                     stepped: bool) -> tuple[bool, bool] | None:
        """One micro-batch's yields: backwards, and on the last micro-batch the optimizer steps; its figures
        summed into ``values``. Whether an optimizer stepped and whether a loss was yielded; None if skipped."""
        batch = to_device(batch, self.device, True, self.speed.channels_last)  # no-op once fed
        pairs = contracts.training_steps(self.recipe, batch, self.loss_fn, self.model)
        yielded = False
        while (pair := self._next_pair(pairs)) is not _DONE:
            name, loss = contracts.checked_pair(pair, self.optimizers, self.params, self.model)
            yielded = True
            if self.config.skip_nonfinite and self._nonfinite_anywhere(loss):  # one sync
                self._skip(pairs, stepped)
                return None
            loss = loss / parts if parts > 1 else loss
            _add(values, name, loss)
            if self.params[name]:  # all frozen: logged, not stepped
                self._backward(name, loss)
                if last:
                    self._optimizer_step(name)
                    stepped = True
        for key, value in self.recipe.pop_logs().items():
            _add(values, key, value / parts if parts > 1 else value)
        return stepped, yielded

    def _next_pair(self, pairs: Any) -> Any:
        """The recipe's next yield, run under autocast; ``_DONE`` once it is done."""
        with self.precision.autocast():
            try:
                return next(pairs, _DONE)
            except RuntimeError as exc:
                if data_parallel.unused_parameters_error(exc):  # DDP met a step that left parameters unused
                    raise report.unused_parameters(self.model, self.state.step + 1) from None
                raise

    def _backward(self, name: str, loss: torch.Tensor) -> None:
        """Gradients of this loss into its own optimizer's parameters only."""
        self.precision.scaler.scale(loss).backward(inputs=self.backward_inputs[name])

    def _optimizer_step(self, name: str) -> None:
        """Clip the gradients (averaged across processes by the backward) and step the optimizer (through the
        scaler)."""
        scaler, optimizer = self.precision.scaler, self.optimizers[name]
        self.parallel.check_reduced(name)
        if self.config.clip_grad is not None:
            scaler.unscale_(optimizer)
            clip_grad_norm_(self.params[name], self.config.clip_grad)
        scaler.step(optimizer)

    def _zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def _skip(self, pairs: Any, stepped: bool) -> None:
        """Drop the rest of a step whose loss is not finite (--skip-nonfinite)."""
        self.state.skipped_nonfinite += 1
        self._zero_grad()
        pairs.close()
        self.recipe.pop_logs()
        if stepped:
            self.precision.scaler.update()  # the scaler saw the updates already made this step

    def _nonfinite_anywhere(self, loss: torch.Tensor) -> bool:
        """True when this loss is not finite here or, when distributed, on any process."""
        bad = not bool(torch.isfinite(loss.detach()))
        return bool(distributed.max_flag(int(bad), self.dist)) if self.dist.enabled else bad

    def optimizer_states(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        """The optimizers', schedulers' and grad scaler's states (checkpoint keys of the format)."""
        return {"optimizers": self.optimizer_states(),
                "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
                "scaler": self.precision.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])


def _add(values: Losses, key: str, value: torch.Tensor) -> None:
    """Sum a step's figure into ``values`` (micro-batches and yields of one name add up)."""
    value = value.detach().float()
    values[key] = values[key] + value if key in values else value
