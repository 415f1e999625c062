"""The stage → code-input map: which library files each pipeline stage runs.

Snakemake does not track imported code, so the workflow declares as inputs of a stage's rule
(``library(stage)`` in workflow/rules/common.smk) the source of ``ablationlab.<stage>`` and of
every ablationlab module it imports, transitively: editing a module re-runs exactly the stages
that import it. The imports are read from the source (module and function level, absolute and
relative), so the map follows the code; ``EXCLUDED`` lists the imports that are not code inputs
(importing module → imported module → why it cannot change the files of a stage that runs the
importer). tests/test_stages.py pins the whole map and checks that every excluded import exists.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# the stages with a rule in the workflow (ablationlab.<stage> is the module the rule runs)
STAGES = ("prepare", "study", "train", "summarize", "adaptive", "figures", "report", "track")
# importer → {imported: why}: keyed by the importer, so no stage that runs it follows the import
EXCLUDED = {
    "train": {
        "live_mlflow": "live MLflow logging (train --track): writes to MLflow, never to the run's files",
    },
}


def imported_names(source: str) -> set[str]:
    """Top-level ablationlab module names that ``source`` (a module of the package) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):  # import ablationlab.io [as x]
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ablationlab."))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "ablationlab":
                source_module = node.module.removeprefix("ablationlab").lstrip(".")
            elif node.level == 1:  # from . import io / from .io import x
                source_module = node.module or ""
            else:  # another package, or above this one
                continue
            if source_module:  # from ablationlab.io import x / from .io import x
                found.add(source_module.split(".")[0])
            else:  # from ablationlab import io / from . import io
                found.update(a.name for a in node.names)
    return found


@functools.cache
def imports(module: str) -> frozenset[str]:
    """The package's modules that ablationlab.<module> imports directly."""
    names = imported_names((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    return frozenset(m for m in names if (PACKAGE / f"{m}.py").is_file())


def modules(stage: str) -> list[str]:
    """ablationlab.<stage> and every module it imports, transitively, less the ``EXCLUDED`` imports."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
    seen, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports(name) - seen - EXCLUDED.get(name, {}).keys())
    return sorted(seen)


def shared_code(writer: str, readers: Sequence[str], package_dir: str | Path = PACKAGE) -> list[str]:
    """The code inputs of stage ``writer`` that a stage of ``readers`` runs too: the code that both
    writes and reads the writer's files (prepare and the data's readers: data.py, io.py)."""
    read = {m for stage in readers for m in modules(stage)}
    return [str(Path(package_dir, f"{m}.py")) for m in modules(writer) if m in read]


def code_inputs(stage: str, package_dir: str | Path = PACKAGE) -> list[str]:
    """The source files of ``modules(stage)`` under ``package_dir`` (the workflow passes the
    package's folder relative to its working directory): the code inputs of the stage's rule."""
    return [str(Path(package_dir, f"{m}.py")) for m in modules(stage)]
