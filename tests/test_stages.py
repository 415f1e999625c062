"""ablationlab.stages: the library files each stage's rule declares as code inputs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ablationlab import stages

REPO = Path(__file__).resolve().parents[1]

# what each stage runs; a change here is a change of what editing a module re-runs
MAP = {
    "prepare": ["data", "datasets", "io", "prepare"],
    "study": ["credentials", "datasets", "defaults", "io", "keypath", "recipe", "schema", "study"],
    "train": [
        "augment",
        "cuda_graph",
        "data",
        "defaults",
        "device",
        "evaluate",
        "io",
        "layout",
        "models",
        "recipe",
        "runtime",
        "schema",
        "train",
    ],
    "summarize": ["defaults", "diagnostics", "formats", "io", "layout", "stats", "summarize"],
    "adaptive": ["adaptive", "defaults", "diagnostics", "formats", "io", "layout", "stats", "summarize"],
    "figures": [
        "augment",
        "data",
        "defaults",
        "device",
        "diagnostics",
        "figure_plan",
        "figures",
        "formats",
        "io",
        "keypath",
        "layout",
        "models",
        "recipe",
        "runtime",
        "stats",
        "summarize",
    ],
    "report": [
        "credentials",
        "defaults",
        "diagnostics",
        "formats",
        "io",
        "keypath",
        "layout",
        "provenance",
        "report",
        "stats",
        "summarize",
    ],
    "track": [
        "credentials",
        "defaults",
        "diagnostics",
        "formats",
        "io",
        "keypath",
        "layout",
        "mlflow_store",
        "provenance",
        "stats",
        "summarize",
        "track",
    ],
}
# what no training depends on: the downloaders and parsers, the statistics and the report, MLflow
NOT_TRAINING = {
    "prepare",
    "datasets",
    "stats",
    "summarize",
    "diagnostics",
    "report",
    "figures",
    "figure_plan",
    "track",
    "mlflow_store",
}


SOURCE = """
import os
import ablationlab
import ablationlab.io as abl_io
from ablationlab import data, recipe as recipes
from ablationlab.keypath import lookup
from . import models
from .stats import mean
from .. import elsewhere
from numpy import io as not_ours


def later():
    from ablationlab import live_mlflow
    from .evaluate import evaluate

    class Inner:
        def method(self):
            import ablationlab.summarize.sub
"""


def test_the_scan_finds_module_and_function_level_imports_in_every_form():
    found = stages.imported_names(SOURCE)
    assert found == {"io", "data", "recipe", "keypath", "models", "stats", "live_mlflow", "evaluate", "summarize"}


def test_the_map_of_every_stage():
    assert {stage: stages.modules(stage) for stage in stages.STAGES} == MAP


def test_train_runs_evaluate_but_not_its_live_logging():
    assert "evaluate" in stages.modules("train")  # train --evaluate
    assert "live_mlflow" in stages.imports("train")  # imported plainly, and excluded by the table
    assert "live_mlflow" not in stages.modules("train") and "live_mlflow" not in stages.modules("figures")


def test_every_exclusion_is_a_real_import_with_a_reason():
    for importer, excluded in stages.EXCLUDED.items():
        for module, why in excluded.items():
            assert module in stages.imports(importer), f"{importer} does not import {module}: drop the exclusion"
            assert why.strip()


def test_no_stage_imports_the_library_by_name():
    """importlib.import_module / __import__ would hide a module from the map."""
    every = {m for stage in stages.STAGES for m in stages.modules(stage)}
    for module in sorted(every):
        tree = ast.parse((stages.PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        calls = [
            node.func
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ]
        assert not calls, f"{module}.py imports by name (line {calls[0].lineno}): use an import statement"


def test_training_runs_none_of_the_downloaders_statistics_report_or_mlflow_code():
    assert not NOT_TRAINING & set(stages.modules("train"))
    assert "live_mlflow" not in stages.modules("track")  # live logging: nothing but the train jobs run it


def test_code_inputs_are_the_files_under_the_given_folder():
    files = [f"src/ablationlab/{m}.py" for m in ("data", "datasets", "io", "prepare")]
    assert stages.code_inputs("prepare") == [str(stages.PACKAGE / Path(f).name) for f in files]
    assert stages.code_inputs("prepare", "src/ablationlab") == files
    assert all(Path(f).is_file() for stage in stages.STAGES for f in stages.code_inputs(stage))
    with pytest.raises(ValueError, match="unknown stage 'evaluate'"):
        stages.code_inputs("evaluate")


def test_the_stages_are_those_the_workflow_asks_for():
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    assert set(re.findall(r"""library\(["'](\w+)["']\)""", text)) == set(stages.STAGES)
