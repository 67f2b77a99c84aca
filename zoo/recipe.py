"""The model recipe interface: the math of a step, nothing of the loop.

A recipe is an ``nn.Module`` whose child modules are its networks (so its
``state_dict`` keys are prefixed by network name). The engine owns the loop,
devices, precision, accumulation, clipping and checkpoints; a recipe says
which optimizers exist and yields ``(optimizer_name, loss)`` pairs in order.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

TASKS = ("generation", "classification", "image_to_image")


class Recipe(nn.Module):
    """Base class of every zoo model.

    Class attributes declare what the model works with; the engine checks them
    before building anything:

    * ``task``: one of ``generation``, ``classification``, ``image_to_image``;
      a dataset lists the tasks it can feed.
    * ``losses``: the ``--loss`` names that make sense for this model;
      ``default_loss`` is used when ``--loss`` is not given.
    * ``loss_role``: one sentence saying what ``--loss`` means for this model.
    * ``metric``: ``(name, "max"|"min")`` of the evaluation metric that picks
      the best checkpoint, or ``None``.
    * ``eval_metrics``: the names ``evaluation_step`` reports (besides ``count``),
      so hooks can check theirs before training; ``None`` when not declared.
    """

    task: ClassVar[str] = "classification"
    losses: ClassVar[tuple[str, ...]] = ()
    default_loss: ClassVar[str | None] = None
    loss_role: ClassVar[str] = "the training objective"
    metric: ClassVar[tuple[str, str] | None] = None
    eval_metrics: ClassVar[tuple[str, ...] | None] = None
    default_lr: ClassVar[float] = 1e-3
    compilable: ClassVar[bool] = True  # False when torch.compile cannot take the networks
    # True once training_step is known to run the same device work every step: no host syncs,
    # no Python-side state a CUDA graph would freeze (--cuda-graph and --fast capture only then)
    capturable: ClassVar[bool] = False
    # True when every step runs the same networks over the same parameters (several processes: DDP's
    # static_graph, which skips its per-step search; only for one network, one optimizer)
    ddp_static_graph: ClassVar[bool] = False
    # True for a fully convolutional image-to-image model: zoo predict restores whole images at their own size
    any_image_size: ClassVar[bool] = False
    min_image_size: ClassVar[int] = 1  # with any_image_size: the shortest side a whole image may have

    @classmethod
    def adapt_to_data(cls, shape: tuple[int, int, int], num_classes: int | None,
                      options: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        """Fill shape options the user did not set from the data.

        ``shape`` is the dataset's natural ``(channels, height, width)``. Returns
        the completed options and the ``(channels, size)`` the model wants its
        input images in; the engine rebuilds the dataset at that size if needed.
        The default fills ``channels``, ``image_size`` and ``num_classes`` when
        the constructor takes them.
        """
        params = inspect.signature(cls.__init__).parameters
        filled = dict(options)
        if "channels" in params:
            filled.setdefault("channels", shape[0])
        if "image_size" in params:
            filled.setdefault("image_size", shape[1])
        if "num_classes" in params and num_classes:
            filled.setdefault("num_classes", num_classes)
        return filled, (filled.get("channels", shape[0]), filled.get("image_size", shape[1]))

    def configure_optimizers(self, lr: float | None) -> dict[str, torch.optim.Optimizer]:
        """Return the optimizers by name; ``lr`` is the user's ``--lr`` or ``None``."""
        return {"model": torch.optim.Adam(self.parameters(), lr=lr or self.default_lr)}

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Return LR schedulers by optimizer name, stepped once per epoch. Default: none."""
        return {}

    def training_step(self, batch: Any, loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(optimizer_name, loss)`` pairs in order.

        The engine backpropagates each loss into that optimizer's parameters
        only and steps it before resuming the generator, so a later yield sees
        the networks the earlier ones just updated. Record extra scalars with
        :meth:`log`. ``loss_fn`` is the ``--loss`` module, or ``None`` when the
        model has no default loss and none was given. Draw randomness from the
        global torch RNG: the engine seeds it and saves it in checkpoints.
        """
        raise NotImplementedError

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Return per-batch *sums* of metrics plus ``count`` (samples); the engine averages.

        Called in eval mode under ``torch.no_grad()``. Draw any randomness from
        ``generator`` (on the batch's device) so evaluation never changes training.
        """
        raise NotImplementedError

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor | None:
        """Return ``count`` images in ``[-1, 1]`` for generative models, else ``None``."""
        return None

    def sample_inputs(self, count: int, generator: torch.Generator) -> torch.Tensor | None:
        """The fixed inputs (e.g. noise) that :meth:`sample` grids are drawn from; ``None`` if unused."""
        return None

    def generate(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Images in ``[-1, 1]`` from given :meth:`sample_inputs` (used to interpolate); ``None`` if unsupported."""
        return None

    # Scalars recorded during a step, read by the engine at logging steps.
    def log(self, name: str, value: torch.Tensor) -> None:
        """Record a scalar for this step (kept as a tensor: no device sync)."""
        store = self.__dict__.setdefault("_step_logs", {})
        store[name] = value.detach()

    def pop_logs(self) -> dict[str, torch.Tensor]:
        """Scalars recorded since the last call (used by the engine)."""
        return self.__dict__.pop("_step_logs", {})


def class_attribute_problem(cls: type) -> str | None:
    """What is wrong with a recipe class's declarations (``task``, ``metric``), or ``None``."""
    if cls.task not in TASKS:
        return f"its task {cls.task!r} is none of {', '.join(TASKS)}"
    metric = cls.metric
    if metric is not None:
        if not (isinstance(metric, (tuple, list)) and len(metric) == 2 and metric[1] in ("max", "min")):
            return f"its metric {metric!r} must be (name, 'max' or 'min') or None"
        reported = declared_eval_metrics(cls)
        if reported is not None and metric[0] not in reported:
            return (f"its metric {metric[0]!r}, which picks the best checkpoint, is not among its eval_metrics "
                    f"({', '.join(reported)})")
    return None


def declared_eval_metrics(recipe: nn.Module | type) -> tuple[str, ...] | None:
    """The metric names a recipe's (or recipe class's) ``evaluation_step`` reports, when the class that declares
    ``eval_metrics`` also defines that ``evaluation_step`` (or inherits it): a subclass that reports others but
    keeps its parent's declaration declares nothing."""
    recipe_class = recipe if isinstance(recipe, type) else type(recipe)
    mro = recipe_class.__mro__
    declared = next((cls for cls in mro if "eval_metrics" in vars(cls)), None)
    evaluates = next((cls for cls in mro if "evaluation_step" in vars(cls)), None)
    if declared is None or evaluates is None or not issubclass(declared, evaluates):
        return None
    return getattr(recipe_class, "eval_metrics", None)


def predictor(recipe: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What maps a batch of inputs to the model's outputs: the recipe's ``predict``, else its own
    ``forward``, else its only network; ``None`` when it has several networks and neither method.
    """
    method = getattr(recipe, "predict", None)
    if callable(method):
        return method
    if type(recipe).forward is not nn.Module.forward:
        return recipe
    networks = list(recipe.children())
    return networks[0] if len(networks) == 1 else None
