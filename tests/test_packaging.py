"""The built wheel works outside the repository: its package data (schema, templates) ships inside it."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import copy_workflow

REPO = Path(__file__).resolve().parents[1]
# what setuptools needs to build the wheel: copied so the build leaves nothing in the checkout
BUILD_INPUTS = ["pyproject.toml", "README.md", "src"]


def _offline_build() -> bool:
    """Whether this environment's setuptools builds wheels itself (>= 70.1): then no index is needed."""
    return importlib.util.find_spec("setuptools.command.bdist_wheel") is not None


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built by pip from a copy of the project (with this environment's setuptools when it can)."""
    project = copy_workflow(tmp_path / "project", BUILD_INPUTS)
    isolation = ["--no-build-isolation"] if _offline_build() else []  # else pip fetches setuptools from the index
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation]
    proc = subprocess.run(
        [*pip, str(project), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("ablationlab-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_validates_a_study_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "ablationlab/schemas/config.schema.yaml" in names
    assert "ablationlab/templates/report.html.j2" in names
    assert "ablationlab/templates/captions/curves.rst" in names  # read by the figures stage and Snakemake
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"  # no repository around: only the config files a user has
    (work / "presets").mkdir(parents=True)
    shutil.copy2(REPO / "config.yaml", work / "config.yaml")
    shutil.copy2(REPO / "presets" / "quick.yaml", work / "presets" / "quick.yaml")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)

    where = run("-c", "import ablationlab.defaults as s; print(s.__file__); print(s.SCHEMA_PATH)")
    assert where.returncode == 0, where.stderr
    module, schema = map(Path, where.stdout.split())
    assert module.is_relative_to(site) and schema.is_relative_to(site) and schema.is_file()
    proc = run("-m", "ablationlab", "study", "config.yaml", "presets/quick.yaml", "--out", "study")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("baseline ")
    assert re.search(r"^\d+ experiments x \d+ seeds = \d+ runs on digits$", proc.stdout, flags=re.M), proc.stdout
    assert (work / "study" / "experiments.json").is_file() and (work / "study" / "report.json").is_file()
    # the schema still rejects a bad key from the installed copy, naming it
    (work / "bad.yaml").write_text("baseline: {epochs: -1}\n")
    bad = run("-m", "ablationlab", "study", "config.yaml", "bad.yaml")
    assert bad.returncode == 1 and "baseline.epochs" in bad.stderr
