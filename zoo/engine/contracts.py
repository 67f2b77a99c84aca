"""The plugin contracts a training run checks, at its boundary with the plugins, each in one line.

A model's ``training_step`` must be a generator of ``(optimizer name, loss)`` pairs, each loss
a scalar that depends on its optimizer's parameters; a loss plugin must return a scalar; its optimizers must have something to
train; a hook may refuse a run in ``check_run``; a dataset must read the ``--data`` it is
given. Checks read metadata only: none costs a device sync. (Dataset items are checked as
they are loaded, in ``zoo.engine.feed``; evaluation results in ``zoo.engine.evaluate``.)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from zoo.errors import PluginError, UsageError, ZooError, first_line, kind_of


def training_steps(recipe: Any, batch: Any, loss_fn: Any, model: str) -> Iterator[Any]:
    """``recipe.training_step(batch, loss_fn)``, refused unless it is a generator (yield, not return)."""
    pairs = recipe.training_step(batch, loss_fn)
    if not isinstance(pairs, Iterator):
        raise PluginError(f"model '{model}': training_step must be a generator that yields (optimizer name, loss) "
                          f"pairs, got {kind_of(pairs)} (yield, not return).")
    return pairs


def checked_pair(pair: Any, optimizers: dict[str, Any], params: dict[str, list[torch.Tensor]],
                 model: str) -> tuple[str, torch.Tensor]:
    """A ``(optimizer name, loss)`` pair from ``training_step``, checked on metadata only (no device sync)."""
    named = f"model '{model}'"
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise PluginError(f"{named}: training_step must yield (optimizer name, loss) pairs, got {kind_of(pair)}.")
    name, loss = pair
    if not isinstance(name, str) or name not in optimizers:
        raise PluginError(f"{named} yielded a loss for optimizer {name!r} but configured only "
                          f"{', '.join(repr(key) for key in optimizers)}.")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise PluginError(f"{named}: the loss of optimizer '{name}' must be a scalar tensor, got "
                          f"{kind_of(loss)} (reduce it, e.g. with .mean()).")
    if params[name] and not loss.requires_grad:
        raise PluginError(f"{named} yielded a loss for optimizer '{name}' that does not depend on its "
                          f"parameters (no grad_fn): compute it from the networks' outputs, without "
                          f".detach(), .item() or torch.no_grad().")
    return name, loss if loss.dim() == 0 else loss.reshape(())  # a loss of shape (1,) is logged beside scalars


class ScalarLossCheck:
    """A forward hook that names a loss whose output is not a scalar tensor (metadata only: no sync).

    It checks until a call passes, then removes itself: a module with a forward hook takes torch's slower
    call path, which a small model's step would pay every time. A loss that goes wrong only later is
    still refused where the model yields it (``contracts.checked_pair``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.handle: Any = None  # the hook's handle, set where it is registered

    def __call__(self, _module: Any, _inputs: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.numel() != 1:
            raise PluginError(f"loss '{self.name}' must return a scalar tensor, got {kind_of(output)} "
                              f"(reduce it in forward, e.g. with .mean()).")
        if self.handle is not None:
            self.handle.remove()


def check_optimizers(optimizers: dict[str, Any], model: str) -> None:
    """A model must configure at least one optimizer."""
    if not optimizers:
        raise PluginError(f"model '{model}' configured no optimizer.")


def idle_optimizers(params: dict[str, list[torch.Tensor]], freeze: list[str], model: str) -> list[str]:
    """The optimizers left without trainable parameters; a run that would train nothing is refused."""
    idle = [name for name, group in params.items() if not group]
    if len(idle) == len(params):
        if not freeze:
            raise PluginError(f"model '{model}' gave its optimizers no trainable parameter.")
        raise UsageError(f"--freeze {' '.join(freeze)} leaves no trainable parameter, so nothing would train; "
                         f"freeze fewer parameters.")
    return idle


def data_parallel_networks(recipe: torch.nn.Module, params: dict[str, list[torch.Tensor]],
                           model: str) -> dict[str, str]:
    """The recipe's networks for DistributedDataParallel: ``{submodule path: optimizer}``, the highest
    submodules whose trainable parameters all belong to one optimizer. A trained parameter held by the recipe
    itself, or by a module whose submodules other optimizers train, is refused in one line."""
    owner = {id(p): name for name, group in params.items() for p in group}
    found: dict[str, str] = {}

    def visit(module: torch.nn.Module, path: str) -> None:
        direct = {owner[id(p)] for p in module.parameters(recurse=False) if id(p) in owner}
        if direct and not path:  # the model object is not a network: its training_step is not a forward
            raise PluginError(f"model '{model}' trains parameters it holds itself, outside any submodule; several "
                              f"processes need each trained parameter inside a network (a submodule).")
        if direct:  # trained here, beside submodules of other optimizers: no one wrapper fits them
            raise PluginError(f"model '{model}' trains parameters of '{path}' itself while other optimizers train "
                              f"its submodules; several processes need each network trained by one optimizer.")
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            owners = {owner[id(p)] for p in child.parameters() if id(p) in owner}
            if len(owners) == 1:
                found[child_path] = owners.pop()
            elif owners:
                visit(child, child_path)

    visit(recipe, "")
    return found


def not_called_as_network(model: str, path: str) -> PluginError:
    """A network got gradients in a step without its own forward being called, so DDP could not average them."""
    return PluginError(f"model '{model}': network '{path}' got gradients in a step without being called itself "
                       f"(e.g. self.{path}.some_method(x)), so the processes could not average them; "
                       f"call the network (self.{path}(x)) in training_step.")


class HookRefusedRun(UsageError):
    """A hook's ``check_run`` refused the run: an option that cannot work with this model or config."""


def run_hook_checks(hooks: list[tuple[Any, Any]], run: Any, resumed: bool, notice: Callable[[str], None]) -> None:
    """Let each hook refuse the run before any step (its optional ``check_run(run)``).

    A ``ValueError`` or usage error there is a usage error naming the hook: an option that cannot
    work with this model or config. A resumed run only hears of it, so runs saved before a hook
    checked this still go on. ``hooks`` pairs each hook's registry entry with its object.
    """
    for entry, obj in hooks:
        check = getattr(obj, "check_run", None)
        if not callable(check):
            continue
        name, qualified = entry.name, entry.qualified_name
        try:
            check(run)
        except (ValueError, UsageError) as exc:
            if not resumed:
                raise HookRefusedRun(f"hook '{name}': {exc}") from None
            notice(f"hook '{name}': {exc}")
        except ZooError:
            raise
        except Exception as exc:
            raise PluginError(f"hook '{qualified}' failed in check_run: {first_line(exc)}") from exc


def check_data_is_read(data: str | None, train_set: Any, dataset: str, resumed: bool,
                       notice: Callable[[str], None]) -> None:
    """Refuse a --data the dataset ignores: the run would train on other data than the user named.

    A run saved before this was refused only hears of it, so it still resumes.
    """
    if not data or train_set.reads_data:
        return
    problem = (f"dataset '{dataset}' does not read --data {data}; to train on those files pick a dataset that "
               f"reads them, e.g. --dataset imagefolder ('zoo list datasets').")
    if not resumed:
        raise UsageError(problem)
    notice(problem)
