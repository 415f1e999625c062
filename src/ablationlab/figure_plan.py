"""The report's figure files of a study, from its table (``experiments.json``) alone: :func:`plan`.

The workflow declares them as the outputs of the ``figures`` rule while it parses, so this module
is small and imports nothing heavy; :mod:`ablationlab.figures` draws them.

Each kind's caption is one Jinja template, :func:`caption_file`: :mod:`ablationlab.figures` renders it
with the figure's values for the report, and Snakemake's ``report(caption=...)`` renders the same file
without them (a template words what it says then with ``default`` and ``is defined``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ablationlab import io

STUDY_GROUP = "study"  # the group of the study-wide figures
CAPTIONS = Path(__file__).resolve().parent / "templates" / "captions"


class FigureError(ValueError):
    """Inputs of the figures stage are missing or inconsistent."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def groups(study: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Experiments by group, groups in order of first appearance (study order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for exp in study["experiments"]:
        out.setdefault(exp["group"], []).append(exp)
    return out


def by_id(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Experiments by id."""
    return {exp["id"]: exp for exp in study["experiments"]}


def new_augmentations(exps: list[dict[str, Any]], study: dict[str, Any]) -> list[dict[str, Any]]:
    """Augmentations used in the group that its references do not use (unique up to ``p``, in order)."""
    index = by_id(study)

    def key(item: dict[str, Any]) -> str:
        return io.canonical_json({k: v for k, v in item.items() if k != "p"})

    known = {
        key(a)
        for exp in exps
        if exp["reference"] in index
        for a in index[exp["reference"]]["recipe"].get("augment", [])
    }
    found: dict[str, dict[str, Any]] = {}
    for exp in exps:
        for item in exp["recipe"].get("augment", []):
            if key(item) not in known:
                found.setdefault(key(item), item)
    return list(found.values())


def plan(study: dict[str, Any]) -> list[dict[str, str]]:
    """The figure files of ``study``: ``[{"file", "group", "kind"}]`` in report order."""
    items: list[dict[str, str]] = []
    for group, exps in groups(study).items():
        kinds = ["curves"]
        if group == "baseline":
            kinds += ["params", "filters", "activations"]
        else:
            kinds += ["test_acc", "forest"]
            if any(exp.get("sweep") for exp in exps):
                kinds.append("sweep")
            if any(exp["recipe"].get("early_stopping", {}).get("enabled") for exp in exps):
                kinds.append("early_stopping")
            if new_augmentations(exps, study):
                kinds.append("augment")
        for kind in kinds:
            ext = "csv" if kind == "params" else "png"
            items.append({"file": f"{_safe(group)}_{kind}.{ext}", "group": group, "kind": kind})
    for kind in ("comparison", "best_filters", "confusion", "misclassified"):
        items.append({"file": f"{kind}.png", "group": STUDY_GROUP, "kind": kind})
    files = [item["file"] for item in items]
    clash = sorted({f for f in files if files.count(f) > 1})
    if clash:
        raise FigureError(f"figure file names clash: {clash} (rename the group)")
    return items


def caption_file(kind: str) -> Path:
    """The caption template of a figure kind (reStructuredText with Jinja, one line)."""
    return CAPTIONS / f"{kind}.rst"
