"""The formats ``zoo export`` writes: how each saves a module with a dynamic batch axis, and how each is loaded
back with its own runtime for the parity check.

Imports torch (and onnx, onnxruntime) only inside the functions that use them, so the CLI's help stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from zoo.errors import RunError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

INPUT_NAME, OUTPUT_NAME = "input", "output"  # the ONNX graph's names (onnxruntime feeds by name)
BATCH_AXIS = "batch"  # the name of the dynamic first axis
EXTERNAL_DATA_BYTES = 1 << 30  # ONNX files hold at most 2 GiB: larger weights go into model.onnx.data beside it
ONNX_INSTALL = "pip install 'zoo[onnx]'"


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format: the file it writes, the runtime that loads it back, the packages it needs."""

    name: str
    file_name: str  # the exported file's name in an export folder
    runtime: str  # what runs it in the parity check (said in the output)
    packages: tuple[str, ...]  # import names needed besides torch
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]

    @property
    def suffix(self) -> str:
        """The exported file's suffix (``.onnx``, ``.pt2``, ``.pt``): an ``--out`` ending in it names a file."""
        return Path(self.file_name).suffix


def _batch_dim() -> object:
    """The dynamic batch axis for ``torch.export`` (one or more items)."""
    import torch
    return torch.export.Dim(BATCH_AXIS, min=1)


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX through torch's dynamo exporter, the batch axis dynamic; weights past 1 GiB go into ``<file>.data``."""
    import torch
    torch.onnx.export(module, (example,), str(path), dynamo=True, dynamic_shapes=({0: _batch_dim()},),
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                      external_data=_weight_bytes(module) > EXTERNAL_DATA_BYTES)


def load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime session on the CPU, as a function of a batch."""
    import onnxruntime
    import torch
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.cpu().numpy()})[0])


def write_exported_program(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.export.export`` with a dynamic batch axis, saved with ``torch.export.save`` (a ``.pt2`` archive)."""
    import torch
    program = torch.export.export(module, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path))


def load_exported_program(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The saved program loaded with ``torch.export.load``, as a callable module."""
    import torch
    return torch.export.load(str(path)).module()


def write_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``torch.jit.trace`` saved with ``torch.jit.save``; a model whose own code would have the trace freeze a
    value of the input (a branch on it) fails rather than record one path (torch's and torchvision's own shape
    checks may)."""
    import torch
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch(vision)?\.")
        traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(path))


def load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The archive loaded with ``torch.jit.load`` on the CPU."""
    import torch
    return torch.jit.load(str(path), map_location="cpu")


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", "model.onnx", "onnxruntime", ("onnx", "onnxscript", "onnxruntime"),
                         write_onnx, load_onnx),
    "exported-program": ExportFormat("exported-program", "model.pt2", "torch.export.load", (),
                                     write_exported_program, load_exported_program),
    "torchscript": ExportFormat("torchscript", "model.pt", "torch.jit.load", (), write_torchscript,
                                load_torchscript),
}


def export_format(name: str) -> ExportFormat:
    """The format called ``name``; another name is a usage error listing them."""
    if name not in FORMATS:
        raise UsageError(f"unknown export format {name!r}; pick one of {', '.join(FORMATS)}.")
    return FORMATS[name]


def require_packages(fmt: ExportFormat) -> None:
    """Refuse, in one line saying what to install, a format whose packages are missing."""
    missing = []
    for package in fmt.packages:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise RunError(f"--format {fmt.name} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                       f"not installed: {ONNX_INSTALL} (or pip install {' '.join(fmt.packages)}).")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Hold back what torch's exporters print (progress, graphs, logs and warnings): the user sees zoo's lines,
    and an exporter's error is reported by its first line."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_LENGTH = 240


def exporter_reason(exc: BaseException) -> str:
    """The first line of the innermost cause of an exporter's error (the ONNX exporter wraps torch.export's),
    without colour codes, cut to a readable length."""
    seen = 0
    while exc.__cause__ is not None and seen < 10:
        exc, seen = exc.__cause__, seen + 1
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > REASON_LENGTH and ". " in first:  # a long first line: its first sentence
        first = first[:first.index(". ") + 1]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH - 3] + "..."
