"""Dotted key paths into nested config and recipe trees: ``optimizer.lr``, ``augment.0.p``
(an integer part indexes a list)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def split_key(key: str) -> list[str | int]:
    """``"augment.0.p"`` → ``["augment", 0, "p"]``."""
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def lookup(tree: Any, key: str | list[str | int]) -> tuple[bool, Any]:
    """``(True, value)`` at ``key`` (dotted, or split) in ``tree``; ``(False, None)`` if there is none."""
    node = tree
    for part in split_key(key) if isinstance(key, str) else key:
        in_list = isinstance(part, int) and isinstance(node, list) and part < len(node)
        in_mapping = isinstance(part, str) and isinstance(node, Mapping) and part in node
        if not (in_list or in_mapping):
            return False, None
        node = node[part]
    return True, node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: leaf value}`` of a nested mapping; lists and empty mappings are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
