"""``zoo check PLUGIN``: does an installed plugin keep zoo's contracts? One result per check.

The checks, in order: the plugin loaded and registered something; every target imports and is
the right kind; option defaults fit their hints and ranges; each dataset's items (per task, both
splits); each model trained with each loss that fits it (two steps, saved, resumed one more,
bitwise equal to three straight steps), its ``evaluation_step`` on a batch, and the plugin's hooks'
states through a checkpoint and back. Runs use :mod:`zoo.testing`, on the CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from zoo import build
from zoo.engine.contracts import HookRefusedRun
from zoo.errors import UsageError, ZooError, first_line
from zoo.options import option_specs
from zoo.registry import Entry, Registry
from zoo.testing import QUIET_HOOKS

STEPS, STOP_AT = 3, 2  # the straight run's length and where the interrupted one stops
BATCH = 4
MODELS_PER_HOOK = 3  # models tried for a hook that refuses some (a metric only some models report)


@dataclasses.dataclass
class CheckResult:
    """One check: what was checked, of which entry, ``ok``/``failed``/``skipped``, and the problem and fix."""

    check: str
    subject: str
    status: str
    detail: str = ""

    def line(self) -> str:
        """``ok    subject: check`` and, past ok, the detail: one line each."""
        mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[self.status]
        return f"{mark}  {self.subject}: {self.check}" + (f" ({self.detail})" if self.detail else "")


def check_plugin(name: str, registry: Registry, data: str | None = None,
                 work_dir: Path | None = None) -> list[CheckResult]:
    """Every check of plugin ``name``; ``data`` feeds datasets that need ``--data``."""
    info = registry.plugins.get(name)
    if info is None:
        close = difflib.get_close_matches(name, sorted(registry.plugins), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"no plugin named '{name}' is installed.{hint} Run 'zoo list plugins' to see them.")
    subject = f"plugin '{name}'"
    if info.status != "ok":
        return [CheckResult("loads", subject, "failed", f"{info.status}: {info.error}")]
    entries = [entry for entry in registry.entries() if entry.plugin == name]
    if not entries:
        return [CheckResult("registers", subject, "failed", "zoo_register registered nothing; call "
                            "registry.model/loss/dataset/hook in it")]
    results = [CheckResult("loads", subject, "ok", f"{info.distribution} {info.version}, {len(entries)} entries")]
    loaded = [entry for entry in entries if _record(results, "imports", entry, lambda e=entry: _load(e))]
    for entry in loaded:
        _record(results, "option defaults", entry, lambda e=entry: _check_options(e))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        checker = _Runs(registry, [e for e in loaded if _passed(results, e)], data, Path(tmp))
        results += checker.datasets()
        results += checker.models()
        results += checker.losses_alone()
        results += checker.hooks()
    return results


def _subject(entry: Entry) -> str:
    return f"{entry.kind} '{entry.qualified_name}'"


def _passed(results: list[CheckResult], entry: Entry) -> bool:
    return not any(r.subject == _subject(entry) and r.status == "failed" for r in results)


def _record(results: list[CheckResult], check: str, entry: Entry | str, action: Callable[[], str | None]) -> bool:
    """Run one check; its result (a zoo error or an assertion is the problem, any other exception a bug
    named by type and place) joins ``results``. Returns whether it passed."""
    subject = entry if isinstance(entry, str) else _subject(entry)
    try:
        detail = action() or ""
    except SkipCheck as skip:
        results.append(CheckResult(check, subject, "skipped", str(skip)))
        return False
    except (ZooError, AssertionError) as exc:
        results.append(CheckResult(check, subject, "failed", str(exc).strip().replace("\n", " ")))
        return False
    except Exception as exc:  # a plugin's bug: its type, message and innermost frame
        results.append(CheckResult(check, subject, "failed", f"{first_line(exc)}{_where(exc)}"))
        return False
    results.append(CheckResult(check, subject, "ok", detail))
    return True


class SkipCheck(Exception):
    """A check that cannot run here (a dataset that needs ``--data``), with why and how to run it."""


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame of ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else ""


def _load(entry: Entry) -> str:
    """Import the target and check its kind (a Recipe, a ZooDataset, an nn.Module loss, a hook class)."""
    loaders = {"model": build.load_recipe_class, "dataset": build.load_dataset_class,
               "loss": build.load_loss_class, "hook": Entry.load}
    cls = loaders[entry.kind](entry)
    return f"{entry.target}" if cls is not None else ""


def _check_options(entry: Entry) -> str:
    """Each default against its type hint and range (the plugin's bug if not); required ones listed."""
    cls = entry.load()
    exclude = build.DATASET_RESERVED if entry.kind == "dataset" else ()
    build.check_defaults(entry, cls, (), exclude)
    specs = option_specs(cls, exclude=(*exclude, *entry.bound_options))
    required = [spec.name for spec in specs if spec.required]
    return f"{len(specs)} options" + (f"; required: {', '.join(required)}" if required else "")


class _Runs:
    """The checks that build and run a plugin's parts: datasets, models with their losses, hooks."""

    def __init__(self, registry: Registry, entries: list[Entry], data: str | None, tmp: Path) -> None:
        self.registry, self.data, self.tmp = registry, data, tmp
        self.by_kind = {kind: [e for e in entries if e.kind == kind] for kind in ("model", "loss", "dataset", "hook")}
        own = {e.name for e in self.by_kind["hook"]}
        self.no_hooks = [name for name in QUIET_HOOKS if name not in own]  # the plugin's own hooks stay on
        self.losses_used: set[str] = set()
        self.failed_models: set[str] = set()  # models whose own check failed: not used for others' checks
        self.runs = 0

    def datasets(self) -> list[CheckResult]:
        """Each dataset, for each task it feeds, both splits: the item contract on its first items."""
        from zoo.testing import check_items

        results: list[CheckResult] = []
        for entry in self.by_kind["dataset"]:
            cls = build.load_dataset_class(entry)
            for task in cls.tasks:
                def items(task: str = task, cls: Any = cls, entry: Entry = entry) -> str:
                    self._need_data(entry, cls)
                    problems = [f"{split} {problem}" for split in ("train", "test") for problem in check_items(
                        entry.qualified_name, split=split, task=task, data=self.data, registry=self.registry)]
                    assert not problems, "; ".join(problems[:3]) + "; see the item contract in docs/plugins.md"
                    return "the first items of both splits"
                _record(results, f"items ({task.replace('_', '-')})", entry, items)
        return results

    def _need_data(self, entry: Entry, cls: Any) -> None:
        if cls.needs_data and not self.data:
            raise SkipCheck(f"needs --data: {cls.data_help}; run zoo check {entry.plugin} --data DIR")

    def _dataset_for(self, task: str) -> tuple[str | None, str | None]:
        """The plugin's own dataset that feeds ``task`` and can be read here, with the ``--data`` it reads (None
        for one that reads none), else ``(None, None)``: the embedded default."""
        for entry in self.by_kind["dataset"]:
            cls = build.load_dataset_class(entry)
            if task in cls.tasks and (self.data or not cls.needs_data):
                return entry.qualified_name, self.data if getattr(cls, "reads_data", True) else None
        return None, None

    def models(self) -> list[CheckResult]:
        """Each model with each loss that fits it: trains, resumes bitwise, evaluates a batch."""
        results: list[CheckResult] = []
        for entry in self.by_kind["model"]:
            recipe_cls = build.load_recipe_class(entry)
            for loss in self._losses_of(recipe_cls):
                check = "trains and resumes exactly" + (f" with loss '{loss}'" if loss else "")
                self._model_checks(results, entry.qualified_name, _subject(entry), check, loss,
                                   *self._dataset_for(recipe_cls.task))
        return results

    def losses_alone(self) -> list[CheckResult]:
        """Losses no model run used: trained with an installed model that names them, else built alone."""
        results: list[CheckResult] = []
        for entry in self.by_kind["loss"]:
            if entry.qualified_name in self.losses_used:
                continue
            model = next(self._models_that_run(entry.name), None)
            if model is None:
                _record(results, "builds with its defaults", entry, lambda e=entry: _built_alone(e))
            else:
                self._model_checks(results, model.qualified_name, _subject(entry),
                                   f"trains and resumes exactly with model '{model.qualified_name}'",
                                   entry.qualified_name, None, None)
        return results

    def hooks(self) -> list[CheckResult]:
        """Each hook on a run of the first model it accepts (the plugin's own first): its state goes into a new
        instance and out unchanged, and the run resumes bitwise."""
        results: list[CheckResult] = []
        for entry in self.by_kind["hook"]:
            runs: dict[str, Any] = {}
            if _record(results, "runs", entry, lambda e=entry: self._hook_run(e, runs)):
                _record(results, "state round trip", entry, lambda e=entry: _hook_round_trip(runs["run"], e))
                _record(results, "resumes exactly", entry, lambda: _no_difference(runs["difference"]))
        return results

    def _hook_run(self, entry: Entry, runs: dict[str, Any]) -> str:
        """A straight and a resumed run with the hook on, of the first model it does not refuse."""
        refusal, tried = "no installed model trains on data that needs no --data", 0
        for model in itertools.islice(self._models_that_run(), MODELS_PER_HOOK):
            tried += 1
            try:
                detail, runs["run"], runs["difference"] = self._runs(model.qualified_name, None, None, None,
                                                                     [entry.qualified_name])
            except HookRefusedRun as exc:  # an option that cannot work with this model: the next one
                refusal = str(exc)
                continue
            return f"with model '{model.qualified_name}' {detail}"
        if tried:
            raise AssertionError(f"it refused every model tried ({tried}), the last with: {refusal}")
        raise SkipCheck(f"no model to run it with: {refusal}")

    def _losses_of(self, recipe_cls: Any) -> list[str | None]:
        """The losses that fit a model: those it names that are installed, else its default (or none)."""
        named = [name for name in recipe_cls.losses if self.registry.entries("loss", [name])]
        return named or [recipe_cls.default_loss if recipe_cls.default_loss else None]

    def _models_that_run(self, loss: str | None = None) -> Iterator[Entry]:
        """Installed models (the plugin's own first) the embedded default data feeds; with ``loss``, those that
        name it among their losses."""
        own = self.by_kind["model"]
        for entry in [*own, *(e for e in self.registry.entries("model") if e not in own)]:
            if entry.qualified_name in self.failed_models:
                continue
            try:
                cls = build.load_recipe_class(entry)
            except ZooError:
                continue
            if loss is not None and loss not in cls.losses:
                continue
            if any(e.default for e in build.compatible_datasets(self.registry, cls.task)):
                yield entry

    def _model_checks(self, results: list[CheckResult], model: str, subject: str, check: str,
                      loss: str | None, dataset: str | None, data: str | None) -> None:
        """A model's resume check, then its ``evaluation_step`` on a batch; a model that fails is not used again
        for other entries' checks (its failure is said once, as its own)."""
        runs: dict[str, Any] = {}

        def train() -> str:
            if loss is not None:  # tried: not tried again with another model if this one fails
                self.losses_used.add(self.registry.resolve("loss", loss).qualified_name)
            detail, runs["run"], difference = self._runs(model, loss, dataset, data, [])
            return f"{_no_difference(difference)}; {detail}"
        if _record(results, check, subject, train):
            _record(results, "evaluation_step", subject, lambda: _evaluate_once(runs["run"]))
        else:
            self.failed_models.add(model)

    def _runs(self, model: str, loss: str | None, dataset: str | None, data: str | None,
              hooks: list[str]) -> tuple[str, Any, str | None]:
        """Train straight and interrupted-then-resumed: the detail, the straight run, where the two differ."""
        from zoo.testing import resume_difference

        self.runs += 1
        straight, _, difference = resume_difference(
            model, self.tmp / f"run-{self.runs}", steps=STEPS, stop_at=STOP_AT, loss=loss, dataset=dataset,
            data=data, hooks=hooks, no_hooks=self.no_hooks, batch_size=BATCH,
            registry=self.registry)
        run = straight.trainer.run
        return f"on '{run.plan.dataset.qualified_name}'", run, difference


def _no_difference(difference: str | None) -> str:
    """A resume check's verdict: nothing to say, or what differs and where to look."""
    assert difference is None, (
        f"{STOP_AT} steps resumed to {STEPS} differ from {STEPS} straight: {difference}; save all state that "
        f"changes training (state_dict/load_state_dict) and draw randomness from zoo's generators")
    return f"{STOP_AT} steps, resumed to {STEPS} = {STEPS} straight, bitwise"


def _built_alone(entry: Entry) -> str:
    """A loss no installed model names: built with its defaults only."""
    build.build_loss(entry, {})
    return "no installed model names it in its losses, so it was only built"


def _evaluate_once(run: Any) -> str:
    """``evaluation_step`` on one test batch, in eval mode without gradients: sums with ``count``, finite."""
    import math

    import torch
    from torch.utils.data import default_collate

    from zoo.engine.evaluate import checked_sums

    items = [run.test_set[i] for i in range(min(BATCH, len(run.test_set)))]
    batch = default_collate(items)
    run.recipe.eval()
    with torch.no_grad():
        sums = checked_sums(run.recipe.evaluation_step(batch, run.loss_fn, torch.Generator().manual_seed(0)),
                            run.recipe)
    bad = [key for key, value in sums.items() if not math.isfinite(float(value))]
    assert not bad, f"evaluation_step gave non-finite {', '.join(bad)} on a test batch"
    return ", ".join(sorted(sums))


def _hook_round_trip(run: Any, entry: Entry) -> str:
    """The hook's state after a run, into a fresh instance and out again, is what it was."""
    from zoo.testing import first_difference

    live = run.hooks.objects[entry.qualified_name]
    if not callable(getattr(live, "state_dict", None)):
        return "keeps no state"
    options = {key: value for key, value in run.config.hook_opt.items() if key in (entry.name, entry.qualified_name)}
    (_, fresh), = build.build_hooks([entry], options)
    state = live.state_dict()
    fresh.load_state_dict(state)
    difference = first_difference(state, fresh.state_dict(), "state_dict()")
    assert difference is None, (f"a new instance given its state_dict() by load_state_dict gives back another: "
                                f"{difference}; load_state_dict must restore everything state_dict returns")
    return "restored by load_state_dict"


def summary(results: list[CheckResult]) -> str:
    """``N checks: A ok, B failed, C skipped``."""
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "failed", "skipped")}
    return f"{len(results)} checks: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def iter_lines(results: list[CheckResult]) -> Iterator[str]:
    """One line per check, then the summary."""
    yield from (result.line() for result in results)
    yield summary(results)
