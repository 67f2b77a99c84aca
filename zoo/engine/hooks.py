"""Training hooks: the run context they receive and the caller that isolates their errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pluggy
import torch

from zoo import hookspecs
from zoo.errors import PluginError, RunError, first_line
from zoo.registry import Entry, validation_detail


class RunContext:
    """What a hook sees of a live run: folders, config, the recipe, the step, sample grids."""

    def __init__(self, run_dir: Path, config: Any, recipe: Any, device: torch.device,
                 sampler: Callable[[], torch.Tensor | None], metrics: Any,
                 emit: Callable[..., None]) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.recipe = recipe
        self.device = device
        self.rank = 0
        self.step = 0
        self.epoch = 0
        self.stop_reason: str | None = None
        self._sampler = sampler
        self._metrics = metrics
        self._emit = emit
        self._grid_step: int | None = None
        self._grid: torch.Tensor | None = None

    @property
    def generative(self) -> bool:
        """True when the model draws samples (its grids are worth saving)."""
        return self.recipe.task == "generation"

    def sample_grid(self) -> torch.Tensor | None:
        """An image grid (C, H, W) in [0, 1], computed once per step: a generative model's samples from fixed
        inputs; an image-to-image model's fixed test inputs, its outputs and the targets, in three rows; a
        classifier's fixed test images framed green where it is right, red where wrong; or None.
        """
        if self._grid_step != self.step:
            self._grid = self._sampler()
            self._grid_step = self.step
        return self._grid

    def request_stop(self, reason: str) -> None:
        """Ask the engine to stop after the current step (saves a checkpoint first)."""
        self.stop_reason = reason

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Add a scalar or an image ``(C, H, W)`` in ``[0, 1]`` to the run's log at this step.

        Scalars go to ``metrics.jsonl``; images to ``samples/<name>-step-<N>.png``;
        both reach every hook implementing ``on_log`` (tensorboard). Only rank 0
        of a distributed run writes; elsewhere this does nothing.
        """
        if self.rank != 0:
            return
        if isinstance(value, torch.Tensor) and value.dim() == 3:
            image = value.detach().float().clamp(0, 1).cpu()
            from torchvision.utils import save_image
            folder = self.run_dir / "samples"
            folder.mkdir(exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            save_image(image, str(folder / f"{safe}-step-{self.step}.png"))
            self._emit(self, self.step, name, image)
            return
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"run.log({name!r}, ...) takes a number or a (C, H, W) image tensor, "
                            f"not {type(value).__name__}") from None
        self._metrics.write({"kind": "log", "step": self.step, name: number})
        self._emit(self, self.step, name, number)


class HookCaller:
    """Calls the selected hooks in order; a hook that raises stops the run naming it."""

    def __init__(self, hooks: list[tuple[Entry, Any]]) -> None:
        self.manager = pluggy.PluginManager("zoo")
        self.manager.add_hookspecs(hookspecs.LifecycleSpecs)
        for entry, obj in hooks:
            try:
                self.manager.register(obj, name=entry.qualified_name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"hook '{entry.qualified_name}' does not match zoo's hookspecs: "
                                  f"{validation_detail(exc)}; fix or disable plugin '{entry.plugin}'.") from None
            _check_marked(entry, obj)
            if hasattr(obj, "state_dict") != hasattr(obj, "load_state_dict"):
                has, lacks = ("state_dict", "load_state_dict") if hasattr(obj, "state_dict") else \
                    ("load_state_dict", "state_dict")
                raise PluginError(f"hook '{entry.qualified_name}' has {has}() but no {lacks}(): its state could not "
                                  f"come back on resume; define both (or neither).")
        self.names = [entry.qualified_name for entry, _ in hooks]
        self.objects = {entry.qualified_name: obj for entry, obj in hooks}
        self.unsaved: list[str] = []  # why the last state_dict() left a hook's state out
        self._order: dict[str, list[Any]] = {}  # each hook name's implementations, in calling order

    def state_dict(self) -> dict[str, Any]:
        """The saved state of every hook that keeps one (``state_dict()``), for checkpoints.

        A hook whose ``state_dict()`` fails or gives what a checkpoint cannot hold is left out, and
        ``unsaved`` says why: the run's own state is still saved before the error is raised.
        """
        from zoo.engine.checkpoint import flatten

        states, self.unsaved = {}, []
        for name, obj in self.objects.items():
            if not hasattr(obj, "state_dict"):
                continue
            try:
                state = obj.state_dict()
                flatten(state, {}, copy=False)  # what a checkpoint can store, without copying tensors
            except TypeError as exc:
                if "in a checkpoint" not in str(exc):
                    self.unsaved.append(f"hook '{name}' failed in state_dict: {first_line(exc)}")
                else:
                    self.unsaved.append(f"hook '{name}': state_dict() must return JSON values (numbers, strings, "
                                        f"lists, dicts) and tensors; {exc}")
                continue
            except Exception as exc:
                self.unsaved.append(f"hook '{name}' failed in state_dict: {first_line(exc)}")
                continue
            states[name] = state
        return states

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each hook back its saved state (``load_state_dict(state)``)."""
        for name, state in states.items():
            obj = self.objects.get(name)
            if obj is not None and hasattr(obj, "load_state_dict"):
                try:
                    obj.load_state_dict(state)
                except Exception as exc:
                    raise HookFailed(f"hook '{name}' failed in load_state_dict: {first_line(exc)}") from exc

    def weight_sets(self) -> dict[str, dict[str, torch.Tensor]]:
        """The named sets of model weights the hooks offer (their optional ``weight_sets()``): EMA, say."""
        sets: dict[str, dict[str, torch.Tensor]] = {}
        for name, obj in self.objects.items():
            offer = getattr(obj, "weight_sets", None)
            if not callable(offer):
                continue
            try:
                offered = dict(offer())
            except Exception as exc:
                raise HookFailed(f"hook '{name}' failed in weight_sets: {first_line(exc)}") from exc
            odd = [set_name for set_name in offered if not re.fullmatch(r"[A-Za-z0-9_]+", str(set_name))]
            if odd:
                raise PluginError(f"hook '{name}' offers a weight set named {odd[0]!r}: name it with letters, "
                                  f"digits and _ (it names a file and --weights NAME).")
            taken = sorted(set(offered) & set(sets))
            if taken:
                raise PluginError(f"hook '{name}' offers the weight set '{taken[0]}', which another hook of the run "
                                  f"offers too; turn one of them off (--no-hook).")
            sets.update(offered)
        return sets

    def ordered(self, hook_name: str) -> list[Any]:
        """The implementations of ``hook_name`` in calling order: ``tryfirst`` ones, the others, ``trylast``
        ones, each group in the order the hooks were selected."""
        if hook_name not in self._order:
            impls = getattr(self.manager.hook, hook_name).get_hookimpls()  # registration order within groups
            self._order[hook_name] = sorted(impls, key=lambda impl: (not impl.tryfirst, impl.trylast,
                                                                     self.names.index(impl.plugin_name)))
        return self._order[hook_name]

    def call(self, hook_name: str, **kwargs: Any) -> None:
        """Call ``hook_name`` on every hook implementing it, in order (``ordered``); a failure names the hook."""
        for impl in self.ordered(hook_name):
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except HookFailed:  # another hook, called from this one (run.log reaches on_log): already named
                raise
            except Exception as exc:
                raise HookFailed(f"hook '{impl.plugin_name}' failed in {hook_name}: "
                                 f"{type(exc).__name__}: {exc}") from exc


class HookFailed(RunError):
    """A training hook raised: the message names it and the hook function."""


def _check_marked(entry: Entry, obj: Any) -> None:
    """Refuse what pluggy would silently never call: a hookspec's method left unmarked, or a marked
    method no hookspec has (a misspelt ``on_step_end``)."""
    _, unmarked, unknown = hookspecs.hook_methods(obj)
    if unmarked:
        raise PluginError(f"hook '{entry.qualified_name}': {unmarked[0]} is not marked @zoo.hookimpl, so zoo would "
                          f"never call it; decorate it (from zoo import hookimpl).")
    if unknown:
        raise PluginError(f"hook '{entry.qualified_name}': {unknown[0]} is marked @zoo.hookimpl but zoo has no "
                          f"such hook; name it after one of: {', '.join(hookspecs.lifecycle_hook_names())}.")
