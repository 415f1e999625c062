"""Conda environments (environment.yml, workflow/envs/*.yaml) pin exactly what pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = [REPO / "environment.yml", *sorted((REPO / "workflow" / "envs").glob("*.yaml"))]
# what the jobs do not need: the workflow engine runs outside them
ENGINE = {"snakemake", "snakemake-executor-plugin-slurm"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", req.strip())
        assert match, f"not an exact pin: {req!r}"
        pins[_norm(match[1])] = match[2]
    return pins


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = _pins(PYPROJECT["dependencies"])
DEV = _pins(PYPROJECT["optional-dependencies"]["dev"])


def _env(path: Path) -> tuple[list, dict[str, str]]:
    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge", path.name
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return conda, _pins(p for p in pip if not p.startswith("-e"))


@pytest.mark.parametrize("path", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_env_pins_equal_pyproject(path):
    conda, pins = _env(path)
    assert "pip" in conda and any(d.startswith("python=") for d in conda)
    for name, version in pins.items():
        assert (RUNTIME | DEV).get(name) == version, f"{path.name}: {name}=={version} differs from pyproject.toml"
    if path.name == "environment.yml":
        assert pins == RUNTIME | DEV  # the development environment: everything
    else:
        assert set(pins) == set(RUNTIME) - ENGINE  # a job environment: every runtime dependency


def test_python_version_claims_agree():
    """pyproject's lower bound = the README's claim = the conda envs' python (the version tested)."""
    lowest = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["requires-python"])[1]
    assert re.search(r"Python ≥ (\d+\.\d+)", (REPO / "README.md").read_text())[1] == lowest
    for path in ENV_FILES:
        conda, _ = _env(path)
        assert f"python={lowest}" in conda, path.name


def test_every_rule_uses_a_workflow_env():
    used = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        used.update(re.findall(r"\.\./envs/([\w.-]+\.yaml)", smk.read_text()))
        used.update(re.findall(r'^ENV = "\.\./envs/([\w.-]+\.yaml)"', smk.read_text(), flags=re.M))
    assert used and all((REPO / "workflow" / "envs" / name).is_file() for name in used)
