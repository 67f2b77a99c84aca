"""Every pluggy hookspec of zoo, each saying who calls it, when, and what it returns.

Two groups share the ``zoo`` project marker:

* ``RegistrySpecs`` is implemented by a plugin *module* (the object an entry
  point of the ``zoo`` group names). zoo calls it once per plugin while
  discovering plugins.
* ``LifecycleSpecs`` is implemented by a training *hook object*: a class
  registered with ``registry.hook(...)`` and switched on with ``--hook NAME``.
  The engine calls these during ``zoo train``; return values are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: importing these would pull in torch
    from torch import Tensor

    from zoo.engine.hooks import RunContext
    from zoo.registry import Registrar

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


class RegistrySpecs:
    """Hooks a plugin module implements to offer models, losses, datasets and hooks."""

    @hookspec
    def zoo_register(self, registry: Registrar) -> None:
        """Register this plugin's entries; called once per plugin at discovery.

        ``registry`` offers ``model``, ``loss``, ``dataset`` and ``hook``, each
        taking ``(name, target, summary)`` where ``target`` is an import string
        ``"package.module:Attribute"`` so that listing never imports it. zoo
        records which plugin gave each entry. An exception raised here marks
        the plugin broken and drops everything it registered; other plugins
        are unaffected. The return value is ignored.
        """


class LifecycleSpecs:
    """Hooks a training hook object implements, each marked ``@zoo.hookimpl``.

    zoo calls them itself, not through pluggy's caller, so that a hook that raises stops the
    run naming that hook. The order: the hooks in the order they were selected (the default
    hooks, then ``--hook`` ones in the order given); ``@hookimpl(tryfirst=True)`` moves a
    method to the front, ``trylast=True`` to the back. Return values are ignored. Around a
    run: ``check_run`` (optional), then on resume ``load_state_dict``, then ``on_train_start``;
    each step ``on_train_step``, at log steps ``on_step_end``; at an epoch's end
    ``on_epoch_end``, then an evaluation's ``on_eval_end``, then a save's ``state_dict`` and
    ``on_checkpoint_saved``; last ``on_train_end``.
    """

    @hookspec
    def on_train_start(self, run: RunContext) -> None:
        """Called once before the first step (also after a resume, with the hook's state back)."""

    @hookspec
    def on_train_step(self, run: RunContext, step: int, losses: dict[str, Tensor]) -> None:
        """Called after every training step, once its optimizers have stepped (``step`` counts from 1).

        ``losses`` maps names to detached 0-dim tensors on the run's device (the step's losses and
        the figures the model logged): no Python floats, so calling this costs no device sync;
        reading a value (``float(t)``) would. Under ``--cuda-graph`` the tensors are overwritten by
        the next step: clone what you keep. For work every step needs (weight averaging).
        A step skipped whole (``--skip-nonfinite``, every sample unreadable) calls nothing.
        """

    @hookspec
    def on_step_end(self, run: RunContext, step: int, scalars: dict[str, float]) -> None:
        """Called at every logging step (``--log-every``) and at the run's last step.

        ``scalars`` maps names to floats: the losses averaged since the last
        call, ``compute_efficiency``, ``samples_per_sec`` and ``lr/<optimizer>``.
        """

    @hookspec
    def on_epoch_end(self, run: RunContext, epoch: int) -> None:
        """Called after each full pass over the training data (epoch counts from 1), before the
        evaluation and the checkpoint due at that step."""

    @hookspec
    def on_eval_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        """Called after an evaluation on the test split with a dict of float metrics."""

    @hookspec
    def on_checkpoint_saved(self, run: RunContext, step: int, path: Path) -> None:
        """Called after a checkpoint folder was written and renamed into place (after ``state_dict``)."""

    @hookspec
    def on_log(self, run: RunContext, step: int, name: str, value: float | Tensor) -> None:
        """Called when something asks the run to log: ``value`` is a float or an image.

        Images are float tensors ``(C, H, W)`` in ``[0, 1]``. Sources are the
        engine itself and any hook calling ``run.log(name, value)``; a hook that
        writes logs (tensorboard) implements this to receive them.
        """

    @hookspec
    def on_train_end(self, run: RunContext, status: str) -> None:
        """Called once when training stops; ``status`` is "done", "interrupted" or "failed"."""


class OptionalMethods:
    """Plain methods a hook object may define, unmarked: zoo calls them directly and uses what they return."""

    def check_run(self, run: RunContext) -> None:
        """Called once before the run's first step, before a resume's ``load_state_dict``.

        Raise ``ValueError`` (or ``zoo.errors.UsageError``) to refuse the run: a new run stops with
        a usage error naming the hook; a resumed one only prints it, so saved runs go on.
        """

    def state_dict(self) -> dict:
        """Called at every checkpoint, before ``on_checkpoint_saved``; the result is saved with it.

        Return JSON values (numbers, strings, lists, dicts) and tensors. A hook defining it must
        define ``load_state_dict`` too. One that raises is left out of the checkpoint, the run's
        own state is still saved, and the run stops naming the hook (at its end: a warning).
        """

    def load_state_dict(self, state: dict) -> None:
        """Called on resume with what ``state_dict`` returned, after ``check_run``, before ``on_train_start``."""

    def weight_sets(self) -> dict:
        """Called at each evaluation: named sets of model weights this hook keeps (``{"ema": state_dict}``).

        Each set is a state dict of the whole model (its keys). The evaluation also runs the model with
        each set, and reports its metrics as ``<set>/<metric>`` beside the raw weights' (which choose
        the best checkpoint); the raw weights are back, bitwise, before training goes on. Two hooks
        offering one name stop the run.
        """


def optional_method_names() -> list[str]:
    """The plain methods a hook object may define (``check_run``, ``state_dict``, ``load_state_dict``,
    ``weight_sets``)."""
    return [name for name in vars(OptionalMethods) if not name.startswith("_")]


def lifecycle_hook_names() -> list[str]:
    """The hooks a training hook object may implement (``on_train_start``, ``on_step_end``, ...)."""
    return [name for name in vars(LifecycleSpecs) if name.startswith("on_")]


def hook_methods(obj: object) -> tuple[list[str], list[str], list[str]]:
    """A hook class's (or object's) methods as pluggy sees them: (implemented: hookspecs marked
    ``@hookimpl``; unmarked: hookspecs left unmarked, never called; unknown: marked but no hookspec has
    them, never called)."""
    specs = lifecycle_hook_names()
    methods = [name for name in dir(obj) if name.startswith("on_") and callable(getattr(obj, name, None))]
    marked = {name for name in methods if hasattr(getattr(obj, name), "zoo_impl")}
    return ([name for name in methods if name in marked and name in specs],
            [name for name in methods if name in specs and name not in marked],
            [name for name in methods if name in marked and name not in specs])
