"""Whole-step CUDA graphs (``--cuda-graph``): capture one training step, then replay it.

A replay launches every kernel of a step (forwards, backwards, optimizer updates)
in one call, which removes the launch gaps that dominate small, fast models. The
first steps run eagerly on a side stream (cuDNN and the optimizers settle their
state), then one step is captured; later steps copy their batch into the
captured input buffers and replay. A change in batch shapes or optimizer
hyper-parameters (a scheduler's new learning rate) captures again. A step that
cannot be captured (a host sync in the model's code, say) falls back to eager
execution with one line.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

WARMUP_STEPS = 3


def unsupported_reason(optimizers: dict[str, torch.optim.Optimizer]) -> str | None:
    """Why these optimizers cannot run inside a graph, or None when they can."""
    for name, optimizer in optimizers.items():
        if "capturable" not in optimizer.defaults and not isinstance(optimizer, torch.optim.SGD):
            return (f"optimizer '{name}' ({type(optimizer).__name__}) has no capturable mode; "
                    f"use Adam, AdamW, SGD or another optimizer with capturable=True")
    return None


def make_capturable(optimizers: dict[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Switch optimizers to their capturable mode: step counters live on the device, no host syncs."""
    for optimizer in optimizers.values():
        if "capturable" not in optimizer.defaults:
            continue
        optimizer.defaults["capturable"] = True
        for group in optimizer.param_groups:
            group["capturable"] = True
        for state in optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device != device:  # restored from a checkpoint
                state["step"] = step.to(device=device, dtype=torch.float32)


def _leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) batch, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return []


def _clone(tree: Any) -> Any:
    """A copy of a (nested) batch in fresh device memory with the same layout."""
    if isinstance(tree, torch.Tensor):
        return tree.clone(memory_format=torch.preserve_format)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(item) for item in tree)
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    return tree


def _signature(batches: list[Any], optimizers: dict[str, torch.optim.Optimizer]) -> tuple:
    """What a captured graph depends on besides tensor contents: batch layouts and hyper-parameters."""
    layout = tuple((leaf.shape, leaf.dtype, leaf.stride(), leaf.device) for batch in batches for leaf in _leaves(batch))
    settings = tuple(tuple((key, value) for key, value in sorted(group.items()) if key != "params"
                           and isinstance(value, (int, float, bool, str, tuple)))
                     for optimizer in optimizers.values() for group in optimizer.param_groups)
    return len(batches), layout, settings


class StepGraph:
    """Runs a step function through a CUDA graph once warmed up; eagerly where it cannot."""

    def __init__(self, compute: Callable[[list[Any]], dict[str, torch.Tensor]],
                 optimizers: dict[str, torch.optim.Optimizer], say: Callable[[str], None]) -> None:
        self.compute = compute
        self.optimizers = optimizers
        self.say = say
        self.enabled = True
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._signature: tuple | None = None
        self._inputs: list[Any] = []
        self._outputs: dict[str, torch.Tensor] = {}
        self._warmup_left = WARMUP_STEPS

    def __call__(self, batches: list[Any]) -> dict[str, torch.Tensor]:
        """Run one step; the returned tensors stay valid until the next call."""
        if not self.enabled:
            return self.compute(batches)
        signature = _signature(batches, self.optimizers)
        if self._graph is not None and signature == self._signature:
            for static, fresh in zip(_leaves(self._inputs), _leaves(batches)):
                static.copy_(fresh, non_blocking=True)
            self._graph.replay()
            return self._outputs
        if self._warmup_left > 0:
            self._warmup_left -= 1
            return self._on_side_stream(batches)
        return self._capture(batches, signature)

    def _on_side_stream(self, batches: list[Any]) -> dict[str, torch.Tensor]:
        """An eager step on a side stream, as capture's warm-up wants."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            values = self.compute(batches)
        torch.cuda.current_stream().wait_stream(side)
        return values

    def _capture(self, batches: list[Any], signature: tuple) -> dict[str, torch.Tensor]:
        self._graph = self._outputs = None  # free the previous capture first
        inputs = _clone(batches)
        graph = torch.cuda.CUDAGraph()
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        before = generator.clone_state() if hasattr(generator, "clone_state") else None
        try:
            # thread_local: the loader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.compute(inputs)
        except Exception as exc:  # a host sync or an op graphs cannot hold: stay eager from here on
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.say(f"zoo: this model's step cannot be captured in a CUDA graph ({reason}); running eagerly.")
            self.enabled = False
            if before is not None:  # a failed capture leaves the generator in capture mode
                generator.graphsafe_set_state(before)
            torch.cuda.synchronize()
            return self.compute(batches)
        self._graph, self._signature, self._inputs, self._outputs = graph, signature, inputs, outputs
        self.captures += 1
        if self.captures == 1:
            self.say("zoo: training steps now replay one captured CUDA graph.")
        graph.replay()  # capturing ran nothing: this replay is the step itself
        return outputs
