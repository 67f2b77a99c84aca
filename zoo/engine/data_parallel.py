"""DistributedDataParallel for recipes: each network wrapped on its own, in the recipe while steps run.

A recipe's *networks* are its highest submodules whose trainable parameters all belong to one
optimizer (a GAN's generator and discriminator, a classifier's ``net``). Each gets its own
``DistributedDataParallel``, so an optimizer's backward reduces its own buckets alone, started
while the backward still runs, and a later yield sees the networks an earlier one updated. The
wrappers stand in the recipe's attributes only while a step runs (``in_step``); state dicts,
grids, evaluation, hooks and checkpoints always see the plain modules.

Reductions per step (each network, each of its optimizer's steps):

* one, on the step's last micro-batch: the ones before it run under ``no_sync``
  (``--accumulate N``), so they only accumulate locally;
* with ``--accumulate`` above 1, one more for a network that a *later* yield of the step calls
  again after its own optimizer stepped (a GAN's discriminator, called by the generator's loss):
  that call arms its reducer, and the next step's first micro-batch fires it (no public API
  disarms a reducer). Averaging is linear, so the result is the same; only the traffic differs.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zoo.engine import contracts


# BatchNorm's running statistics stay each process's own (rank 0's are saved), as without DDP: no broadcast of
# rank 0's buffers before every forward (torch 2.14 renamed the switch)
_PER_PROCESS_BUFFERS = {"forward_sync_buffers": False} \
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters \
    else {"broadcast_buffers": False}


@dataclass(frozen=True)
class DDPOptions:
    """How the networks are wrapped: what ``--ddp-comm-hook``, ``--find-unused-parameters`` and the recipe ask."""

    comm_hook: str | None = None
    find_unused_parameters: bool = False
    static_graph: bool = False


class WrappedNetwork(DistributedDataParallel):
    """One network in DDP that still answers its module's attributes (a recipe's ``self.generator.nz``) and
    notes when a forward arms its reducer, so a gradient DDP would not average is caught, not trained on."""

    armed = False  # mirrors DDP's reducer: set by a forward that prepares a reduction, cleared by check_reduced

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and self.require_backward_grad_sync:
            self.armed = True  # DDP prepares this backward's reduction
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = (self.__dict__.get("_modules") or {}).get("module")
            if module is None:  # DDP's own set-up, before the module is in place
                raise
            return getattr(module, name)


class DataParallel:
    """The recipe's networks in DDP: put in the recipe for a step, synced on its last micro-batch, checked."""

    def __init__(self, recipe: nn.Module, params: dict[str, list[torch.Tensor]], device: torch.device,
                 options: DDPOptions, model: str) -> None:
        self.recipe, self.model = recipe, model
        found = contracts.data_parallel_networks(recipe, params, model)  # {path: optimizer}
        ids = [device.index] if device.type == "cuda" else None
        trained = {id(p) for group in params.values() for p in group}
        self.networks: dict[str, WrappedNetwork] = {}
        self.optimizer_of: dict[str, str] = found
        for path in found:
            module = recipe.get_submodule(path)
            # parameters no optimizer holds get no gradients (each backward takes its optimizer's alone): out of DDP
            untrained = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in trained]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, untrained)
            self.networks[path] = WrappedNetwork(module, device_ids=ids, **_PER_PROCESS_BUFFERS,
                                                 find_unused_parameters=options.find_unused_parameters,
                                                 static_graph=options.static_graph and len(found) == 1)
            if options.comm_hook:
                register_comm_hook(self.networks[path], options.comm_hook)

    @contextlib.contextmanager
    def in_step(self) -> Iterator[None]:
        """The wrappers in the recipe's attributes while a step runs; the plain modules back after, always."""
        self._place(wrapped=True)
        try:
            yield
        finally:
            self._place(wrapped=False)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Micro-batches before a step's last only accumulate (``no_sync``); the last one reduces."""
        if last:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for network in self.networks.values():
            stack.enter_context(network.no_sync())
        return stack

    def check_reduced(self, optimizer: str) -> None:
        """After ``optimizer``'s last backward of a step: each of its networks that got gradients was called
        through its wrapper (so DDP averaged them); refused in one line otherwise."""
        for path, network in self.networks.items():
            if self.optimizer_of[path] != optimizer:
                continue
            if not network.armed and any(p.grad is not None for p in network.module.parameters()):
                raise contracts.not_called_as_network(self.model, path)
            network.armed = False

    def _place(self, wrapped: bool) -> None:
        for path, network in self.networks.items():
            parent, _, name = path.rpartition(".")
            setattr(self.recipe.get_submodule(parent), name, network if wrapped else network.module)


class SingleProcess:
    """What a one-process run does in place of DataParallel: nothing."""

    def in_step(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def check_reduced(self, optimizer: str) -> None:
        pass


def register_comm_hook(network: DistributedDataParallel, name: str) -> None:
    """DDP's own communication hook ``name``: gradients sent in bf16 or fp16, or compressed by PowerSGD."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    hooks: dict[str, Callable[[], tuple[Any, Any]]] = {
        "bf16": lambda: (None, default_hooks.bf16_compress_hook),
        "fp16": lambda: (None, default_hooks.fp16_compress_hook),
        # rank-1 approximations after 1,000 steps of plain all-reduce (PowerSGD's own warm-up default)
        "powersgd": lambda: (powerSGD_hook.PowerSGDState(process_group=None), powerSGD_hook.powerSGD_hook),
    }
    state, hook = hooks[name]()
    network.register_comm_hook(state, hook)
    network.comm_hook_name = name  # what the run asked for, for tests and reports


def unused_parameters_error(exc: BaseException) -> bool:
    """Whether DDP failed because a step left some of a network's parameters without gradients."""
    return isinstance(exc, RuntimeError) and "find_unused_parameters" in str(exc)
