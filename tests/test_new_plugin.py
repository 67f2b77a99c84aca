"""``zoo new-plugin``: the skeleton installs apart (pip, no network), passes ``zoo check`` and its own tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zoo.errors import UsageError
from zoo.scaffold import FILES, write_plugin


def test_the_skeleton_installs_passes_zoo_check_and_its_own_tests(run_zoo, tmp_path):
    made = run_zoo("new-plugin", "demo_plugin", str(tmp_path / "pkg"))
    assert made.returncode == 0, made.stderr
    assert "wrote plugin 'demo_plugin'" in made.stdout and "zoo check demo_plugin" in made.stdout
    assert (tmp_path / "pkg" / "pyproject.toml").is_file()  # at the root of DIR
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(tmp_path / "pkg")],
        capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    entry_points = next(site.glob("demo_plugin-0.1.0.dist-info")) / "entry_points.txt"
    assert "[zoo]\ndemo_plugin = demo_plugin.plugin" in entry_points.read_text()

    checked = run_zoo("check", "demo_plugin", env={"PYTHONPATH": str(site)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1].endswith(" 0 failed, 0 skipped")
    assert "ok    model 'demo_plugin:demo_plugin_net': trains and resumes exactly" in checked.stdout

    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("ZOO_DISABLE_PLUGINS", None)
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path / "pkg",
                         env=env, capture_output=True, text=True, timeout=600)
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-2000:]
    assert "4 passed" in own.stdout


def test_the_folder_defaults_to_the_name_and_must_be_new_or_empty(run_zoo, tmp_path):
    written = write_plugin("other", tmp_path / "other")
    assert sorted(str(p.relative_to(tmp_path / "other")) for p in written) == \
        sorted(target.format(name="other") for target in FILES.values())
    assert "{{" not in "".join(p.read_text() for p in written)
    again = run_zoo("new-plugin", "other", str(tmp_path / "other"))
    assert again.returncode == 2 and "already exists and is not an empty folder" in again.stderr
    (tmp_path / "empty").mkdir()
    assert run_zoo("new-plugin", "fine", str(tmp_path / "empty")).returncode == 0


@pytest.mark.parametrize("name", ["Demo", "2fast", "my-plugin", "class", ""])
def test_a_name_that_is_no_python_package_name_is_refused(name, tmp_path):
    with pytest.raises(UsageError, match="must be a lower-case Python name"):
        write_plugin(name, tmp_path / "x")
