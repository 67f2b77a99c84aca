"""`make demo`'s job, as the Makefile spells it: it trains, resumes, tests, and its grid shows the generator's output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def makefile_value(name: str) -> str:
    """A ``NAME ?= value`` line of the Makefile."""
    found = re.search(rf"^{name} \?= (.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert found, f"the Makefile has no {name}"
    return found.group(1).strip()


def grid_tiles(path: Path, size: int = 32, padding: int = 2) -> np.ndarray:
    """The tiles of a sample grid (torchvision's make_grid layout), as floats of shape (tiles, size, size, 3)."""
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    count = (image.shape[0] - padding) // (size + padding)
    step = size + padding
    return np.stack([image[padding + row * step:padding + row * step + size,
                           padding + column * step:padding + column * step + size]
                     for row in range(count) for column in range(count)])


def test_the_demo_recipe_trains_resumes_tests_and_draws_distinct_tiles(zoo_cli, tmp_path):
    run_dir = tmp_path / "demo"
    recipe = shlex.split(makefile_value("DEMO_TRAIN"))
    assert int(makefile_value("DEMO_STEPS")) >= 1000  # the demo's length; the README shows its grid at 7000

    code, _, err = zoo_cli("train", *recipe, "--max-steps", "12", "--run-dir", str(run_dir), "--workers", "0")
    assert code == 0, err
    first = grid_tiles(run_dir / "samples" / "latest.png")
    assert len(first) == 64
    assert first.std(axis=0).mean() > 2, "the first grid's tiles are all alike (eval-mode BatchNorm's flat grey)"

    code, _, err = zoo_cli("train", "--resume", str(run_dir), "--max-steps", "16")  # `make demo` run again
    assert code == 0, err
    assert "done at step 16" in err
    code, out, err = zoo_cli("test", "--run", str(run_dir))
    assert code == 0, err
    assert "discriminator" in out + err and "generator" in out + err
