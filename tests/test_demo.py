"""`make demo`'s job, as the Makefile spells it: it trains, resumes, tests, and its grid shows the generator's output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from test_pictures import grid_cells

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def makefile_value(name: str) -> str:
    """A ``NAME ?= value`` line of the Makefile."""
    found = re.search(rf"^{name} \?= (.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert found, f"the Makefile has no {name}"
    return found.group(1).strip()


def test_the_demo_recipe_trains_resumes_tests_and_draws_distinct_tiles(zoo_cli, tmp_path):
    run_dir = tmp_path / "demo"
    recipe = shlex.split(makefile_value("DEMO_TRAIN"))
    assert int(makefile_value("DEMO_STEPS")) >= 1000  # the demo's length; the README shows its grid at 7000

    code, _, err = zoo_cli("train", *recipe, "--max-steps", "12", "--run-dir", str(run_dir), "--workers", "0")
    assert code == 0, err
    first = grid_cells(run_dir / "samples" / "latest.png", 8, 8, size=32).flatten(0, 1).float()  # 64 tiles
    assert first.std(dim=0).mean() > 2, "the first grid's tiles are all alike (eval-mode BatchNorm's flat grey)"

    code, _, err = zoo_cli("train", "--resume", str(run_dir), "--max-steps", "16")  # `make demo` run again
    assert code == 0, err
    assert "done at step 16" in err
    code, out, err = zoo_cli("test", "--run", str(run_dir))
    assert code == 0, err
    assert "discriminator" in out + err and "generator" in out + err
