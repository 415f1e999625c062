"""Recipes: the plain dict that fully describes how one experiment trains.

``DEFAULT_RECIPE`` is the seeds' baseline (simple_cnn, SGD lr 0.05, batch 64,
cross-entropy, 10 epochs). Every other recipe is a partial dict deep-merged over a
base; :func:`complete` fills whatever a partial recipe leaves out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

DEFAULT_RECIPE: dict[str, Any] = {
    "model": {
        "name": "simple_cnn",
        "widths": [32, 64, 128],
        "kernel_size": 5,
        "convs_per_block": 1,
        "hidden": [64],
        "batch_norm": False,
        "dropout": 0.0,
        "dropout_where": "head",
        "activation": "relu",
        "init": "default",
        "weights": "none",
        "train": "finetune",
    },
    "optimizer": {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
    },
    "scheduler": {"name": "none", "step_size": 5, "gamma": 0.1, "patience": 2},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.0},
    "batch_size": 64,
    "drop_last": True,
    "epochs": 10,
    "early_stopping": {
        "enabled": False,
        "monitor": "val_loss",
        "patience": 5,
        "min_delta": 0.0,
        "restore_best": True,
    },
    "augment": [],
    "input": {"resize": None, "standardize": True},
}


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
    """The full recipe: ``partial`` deep-merged over :data:`DEFAULT_RECIPE`."""
    return deep_merge(DEFAULT_RECIPE, partial or {})
