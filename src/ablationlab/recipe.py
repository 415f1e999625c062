"""Recipes: the plain dict that fully describes how one experiment trains.

``DEFAULT_RECIPE`` is the schema's default recipe (:func:`ablationlab.defaults.recipe`: the source
reports' baseline, simple_cnn, SGD lr 0.05, batch 64, cross-entropy, 10 epochs). Every other recipe is a
partial dict deep-merged over a base; :func:`complete` fills whatever a partial recipe leaves out,
each augmentation's keys included. Completing checks nothing: the entry points check the completed
recipe (:func:`ablationlab.schema.check_recipe`, the study and ``train``), the builders trust it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ablationlab import defaults

DEFAULT_RECIPE: dict[str, Any] = defaults.recipe()
AUGMENT_DEFAULTS: dict[str, dict[str, Any]] = defaults.augmentations()


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in; nested dicts merge, lists replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def complete(partial: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full recipe: ``partial`` deep-merged over :data:`DEFAULT_RECIPE`, each augmentation over its
    defaults (an item the schema would refuse, e.g. an unknown name, is left for the check to name)."""
    full = deep_merge(DEFAULT_RECIPE, partial or {})
    if isinstance(full["augment"], list):
        full["augment"] = [_augmentation(item) for item in full["augment"]]
    return full


def _augmentation(item: Any) -> Any:
    name = item.get("name") if isinstance(item, Mapping) else None
    if not isinstance(name, str) or name not in AUGMENT_DEFAULTS:
        return item
    return {"name": name, **copy.deepcopy(AUGMENT_DEFAULTS[name]), **item}
