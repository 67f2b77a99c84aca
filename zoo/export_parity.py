"""The parity check of ``zoo export``: the exported file, run by its own runtime on a batch of another size than
the one it was traced with, against the PyTorch model on the same batch."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

from zoo.errors import RunError, ZooError
from zoo.export_formats import exporter_reason

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from zoo.export_formats import ExportFormat

ABS_TOLERANCE = 1e-4
REL_TOLERANCE = 1e-4  # of the PyTorch output's magnitude: |exported - pytorch| <= abs + rel * |pytorch|
TOLERANCE_TEXT = "1e-4 abs + 1e-4 rel"  # said in the output and docs/using-runs.md
TRACE_BATCH = 2  # the batch the exporters trace with
CHECK_BATCH = 3  # the batch the check runs: another size, so the batch axis is shown to be dynamic
SEED = 0


@dataclasses.dataclass
class Parity:
    """What the check measured: on how many inputs, of what kind, and the largest difference."""

    batch: int
    inputs: str  # "test images", "latent noise vectors" or "random images (...)"
    max_abs_difference: float

    def record(self) -> dict[str, Any]:
        """The check as preprocessing.json records it."""
        return {"batch": self.batch, "inputs": self.inputs, "max_abs_difference": self.max_abs_difference,
                "tolerance": {"abs": ABS_TOLERANCE, "rel": REL_TOLERANCE}}


def trace_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded batch of :data:`TRACE_BATCH` inputs in ``[-1, 1]`` to trace with (exporters read no values)."""
    import torch
    generator = torch.Generator().manual_seed(SEED)
    return torch.rand(TRACE_BATCH, *shape, generator=generator) * 2 - 1


def check_batch(run: Any) -> tuple[torch.Tensor, str]:
    """:data:`CHECK_BATCH` real inputs and what they are: latent noise for a generator, else the first test
    images; random images in ``[-1, 1]`` where the run's test data cannot be read."""
    import torch
    generator = torch.Generator().manual_seed(SEED)
    if run.task == "generation":
        return run.recipe.sample_inputs(CHECK_BATCH, generator).float().cpu(), "latent noise vectors"
    try:
        test_set = run.test_set
        if len(test_set) >= CHECK_BATCH:
            return torch.stack([test_set[i][0] for i in range(CHECK_BATCH)]).float().cpu(), "test images"
        reason = f"the test split has {len(test_set)} items"
    except (ZooError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    inputs = torch.rand(CHECK_BATCH, *run.input_shape, generator=generator) * 2 - 1
    return inputs, f"random images in [-1, 1] ({reason})"


def measure(fmt: ExportFormat, path: Path, reference: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
            inputs: str) -> Parity:
    """Load the file at ``path`` with its runtime, run it and PyTorch on ``batch`` and compare; a file that does
    not load or run, outputs of other shapes, or differences past the tolerance fail."""
    import torch
    fmt_name = fmt.name
    with torch.no_grad():
        expected = reference(batch).float().cpu()
        try:
            got = torch.as_tensor(fmt.load(path)(batch)).float().cpu()
        except Exception as exc:  # the runtime's own error, e.g. a batch axis fixed at the export's size
            raise RunError(f"the exported {fmt_name} model does not run in {fmt.runtime} on a batch of {len(batch)}: "
                           f"{exporter_reason(exc)}; try another --format.") from exc
    if got.shape != expected.shape:
        raise RunError(f"the exported {fmt_name} model gives outputs of shape {tuple(got.shape)} on a batch of "
                       f"{len(batch)}, PyTorch {tuple(expected.shape)}: its batch axis is not dynamic; try another "
                       f"--format.")
    difference = (got - expected).abs()
    largest = float(difference.max()) if difference.numel() else 0.0
    within = bool((difference <= ABS_TOLERANCE + REL_TOLERANCE * expected.abs()).all())
    if not within:  # a NaN on either side is never within
        raise RunError(f"the exported {fmt_name} model differs from PyTorch by up to {largest:.3g} on {len(batch)} "
                       f"{inputs}, past the tolerance ({TOLERANCE_TEXT}); nothing was written.")
    return Parity(len(batch), inputs, largest)
