"""The configuration schema (``schemas/config.schema.yaml``, package data) and what it states as Python
values: the one place where a default or an allowed value is written.

- :func:`recipe`: the default recipe (the schema's ``#/$defs/recipe_defaults``), what the baseline leaves out.
- :func:`augmentations`: each augmentation's keys and their defaults (``#/$defs/augmentation``).
- :func:`allowed`: the values a recipe key allows (its ``enum``), e.g. ``allowed("optimizer.name")``.
- :func:`statistics`: a study table's ``statistics`` block, the schema's defaults for what it leaves out.

Light on purpose (PyYAML only): the workflow reads it while it parses, and the stages that need a
default import it, not the validator (:mod:`ablationlab.schema`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# Shipped inside the package (package data), so an installed wheel validates without the repository.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=4)
def _schema(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:  # libyaml's loader: 5 ms instead of 40 (every train job reads it)
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema(path: str | Path | None = None) -> dict:
    """The configuration schema (a fresh copy)."""
    return copy.deepcopy(_schema(str(Path(path or SCHEMA_PATH).resolve())))


def _defaults(node: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: default}`` of an object schema's properties, nested objects as dicts of their own defaults."""
    return {
        key: _defaults(sub) if "properties" in sub else copy.deepcopy(sub["default"])
        for key, sub in node["properties"].items()
    }


def recipe() -> dict[str, Any]:
    """The default recipe: every recipe key with its default (a fresh copy)."""
    return _defaults(_schema(str(SCHEMA_PATH))["$defs"]["recipe_defaults"])


def augmentations() -> dict[str, dict[str, Any]]:
    """``{augmentation name: {key: default}}`` (``name`` left out), in the schema's order (a fresh copy)."""
    rules = _schema(str(SCHEMA_PATH))["$defs"]["augmentation"]["allOf"]
    return {
        rule["if"]["properties"]["name"]["const"]: {
            key: copy.deepcopy(sub["default"]) for key, sub in rule["then"]["properties"].items() if key != "name"
        }
        for rule in rules
    }


def allowed(key: str) -> tuple:
    """The values recipe key ``key`` (dotted: ``model.init``; ``augment.name`` for an augmentation's name) allows."""
    defs = _schema(str(SCHEMA_PATH))["$defs"]

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        node = defs[node["$ref"].rpartition("/")[2]] if "$ref" in node else node
        return resolve(node["items"]) if "items" in node else node

    node = defs["recipe"]
    for part in key.split("."):
        node = resolve(node)["properties"][part]
    return tuple(node["enum"])


def statistics(block: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``alpha``, ``power``, ``min_effect`` and ``looks`` of a study table's ``statistics`` block; a key it
    leaves out (or null) takes the schema's default, ``looks`` 1 (a fixed seed list: one look)."""
    settings = _schema(str(SCHEMA_PATH))["properties"]["statistics"]["properties"]
    given = {k: v for k, v in (block or {}).items() if v is not None}
    return {**{k: sub["default"] for k, sub in settings.items()}, "looks": 1, **given}
