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

from zoo.errors import ZooError, first_line

WARMUP_STEPS = 3


def unsupported_reason(optimizers: dict[str, torch.optim.Optimizer]) -> str | None:
    """Why these optimizers cannot run inside a graph, or None when they can."""
    for name, optimizer in optimizers.items():
        if "capturable" not in optimizer.defaults and not isinstance(optimizer, torch.optim.SGD):
            return (f"optimizer '{name}' ({type(optimizer).__name__}) has no capturable mode; "
                    f"use Adam, AdamW, SGD or another optimizer with capturable=True")
    return None


def set_capturable(optimizers: dict[str, torch.optim.Optimizer], device: torch.device, enabled: bool) -> None:
    """Put optimizers in (or out of) their capturable mode, whatever a checkpoint saved.

    Capturable: step counters live on the device and updates never sync with the host,
    as a graph needs. Out of it (no graphs, or another device on resume): counters on
    the CPU, the usual fast path. A fused optimizer's kernels read its counters where its
    parameters are, in either mode.
    """
    for optimizer in optimizers.values():
        if "capturable" not in optimizer.defaults:
            continue
        optimizer.defaults["capturable"] = enabled
        for group in optimizer.param_groups:
            group["capturable"] = enabled
            for param in group["params"]:
                step = optimizer.state.get(param, {}).get("step")
                target = param.device if group.get("fused") else device if enabled else torch.device("cpu")
                if isinstance(step, torch.Tensor) and step.device != target:
                    optimizer.state[param]["step"] = step.to(device=target, dtype=torch.float32)


def _leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) batch, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return []


def _others(tree: Any) -> tuple[Any, ...]:
    """The non-tensor leaves of a batch (labels as numbers, names): a graph would freeze them."""
    if isinstance(tree, torch.Tensor):
        return ()
    if isinstance(tree, (list, tuple)):
        return tuple(leaf for item in tree for leaf in _others(item))
    if isinstance(tree, dict):
        return tuple(leaf for key in sorted(tree) for leaf in _others(tree[key]))
    return (tree if isinstance(tree, (str, int, float, bool, type(None))) else repr(tree),)


def _clone(tree: Any) -> Any:
    """A copy of a (nested) batch in fresh device memory with the same layout."""
    if isinstance(tree, torch.Tensor):
        return tree.clone(memory_format=torch.preserve_format)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(item) for item in tree)
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    return tree


def _signature(batches: list[Any], optimizers: dict[str, torch.optim.Optimizer]) -> tuple[Any, ...]:
    """What a captured graph depends on besides tensor contents: batch layouts, non-tensor leaves, settings."""
    layout = tuple((leaf.shape, leaf.dtype, leaf.stride(), leaf.device) for batch in batches for leaf in _leaves(batch))
    layout += tuple(_others(batch) for batch in batches)
    settings = tuple(tuple((key, value) for key, value in sorted(group.items()) if key != "params"
                           and isinstance(value, (int, float, bool, str, tuple)))
                     for optimizer in optimizers.values() for group in optimizer.param_groups)
    return len(batches), layout, settings


StepFunction = Callable[[list[Any]], "dict[str, torch.Tensor] | None"]


class StepGraph:
    """Runs a step function through a CUDA graph once warmed up; eagerly where it cannot.

    A step whose batch layout or optimizer settings differ from the captured graph's
    runs eagerly; once the same new layout has run ``WARMUP_STEPS`` times in a row (a
    new learning rate, say), it is captured in place of the old graph.
    """

    def __init__(self, compute: StepFunction, optimizers: dict[str, torch.optim.Optimizer],
                 say: Callable[[str], None], on_failure: Callable[[], Any] = lambda: None) -> None:
        self.compute = compute
        self.optimizers = optimizers
        self.say = say
        self.on_failure = on_failure
        self.enabled = True
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._signature: tuple[Any, ...] | None = None
        self._inputs: list[Any] = []
        self._outputs: dict[str, torch.Tensor] | None = None
        self._pending: tuple[Any, ...] | None = None  # a layout not captured yet, and how often it ran
        self._pending_runs = 0

    def __call__(self, batches: list[Any]) -> dict[str, torch.Tensor] | None:
        """Run one step; the returned tensors stay valid until the next call."""
        if not self.enabled:
            return self.compute(batches)
        signature = _signature(batches, self.optimizers)
        if self._graph is not None and signature == self._signature:
            for static, fresh in zip(_leaves(self._inputs), _leaves(batches)):
                static.copy_(fresh, non_blocking=True)
            self._graph.replay()
            return self._outputs
        if signature != self._pending:
            self._pending, self._pending_runs = signature, 0
        if self._pending_runs < WARMUP_STEPS:
            self._pending_runs += 1
            return self._on_side_stream(batches)
        return self._capture(batches, signature)

    def _on_side_stream(self, batches: list[Any]) -> dict[str, torch.Tensor] | None:
        """An eager step on a side stream, as capture's warm-up wants."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            values = self.compute(batches)
        torch.cuda.current_stream().wait_stream(side)
        return values

    def _capture(self, batches: list[Any], signature: tuple[Any, ...]) -> dict[str, torch.Tensor] | None:
        self._graph = self._outputs = None  # free the previous capture first
        inputs = _clone(batches)
        graph = torch.cuda.CUDAGraph()
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        before = generator.clone_state() if hasattr(generator, "clone_state") else None
        stream = torch.cuda.current_stream()
        try:
            # thread_local: the loader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.compute(inputs)
        except (ZooError, torch.OutOfMemoryError):
            self._restore(generator, before, stream)
            raise
        except Exception as exc:  # a host sync or an op graphs cannot hold: stay eager from here on
            self._restore(generator, before, stream)
            graph = inputs = None  # the failed capture's memory goes before the eager step
            self.say(f"zoo: this model's step cannot be captured in a CUDA graph ({first_line(exc)}); "
                     f"running eagerly.")
            self.enabled = False
            self.on_failure()
            torch.cuda.synchronize()
            return self.compute(batches)
        self._graph, self._signature, self._inputs, self._outputs = graph, signature, inputs, outputs
        self._pending = None
        self.captures += 1
        if self.captures == 1:
            self.say("zoo: training steps now replay one captured CUDA graph.")
        graph.replay()  # capturing ran nothing: this replay is the step itself
        return outputs

    @staticmethod
    def _restore(generator: torch.Generator, before: torch.Generator | None, stream: torch.cuda.Stream) -> None:
        """A failed capture leaves the random generator in capture mode, and (when ending the capture raised)
        the capture stream current: give both back."""
        if before is not None:
            generator.graphsafe_set_state(before)
        torch.cuda.set_stream(stream)
