"""Every library name the documentation cites (`ablationlab.<module>.<name>`) exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "docs" / "contracts.md", REPO / "README.md"]
NAME = re.compile(r"`(ablationlab(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def cited(path: Path) -> list[str]:
    return sorted(set(NAME.findall(path.read_text(encoding="utf-8"))))


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_pattern_finds_names():
    assert "ablationlab.recipe.DEFAULT_RECIPE" in cited(DOCS[0])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_names_exist(doc):
    names = cited(doc)
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"{doc.name} cites names that do not exist: {missing}"
