"""Checking against the configuration schema (``schemas/config.schema.yaml``, read by
:mod:`ablationlab.defaults`): the one source of the config's and the recipe's rules.

:func:`check` validates a configuration (filling its defaults, as Snakemake's ``validate`` does);
:func:`check_recipe` validates a full or partial recipe against the schema's ``#/$defs/recipe``: what the
study checks every resolved recipe against, and ``train`` a recipe given to it (``--recipe``, or
:func:`ablationlab.train.train`); the builders (models, augment, runtime) trust a checked recipe. Either
raises :class:`ConfigError` whose message starts with the key path (``optimizer.lr: ...``,
``augment[2].name: unknown value 'foo'; ...``).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema

from ablationlab.defaults import load_schema

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


class ConfigError(ValueError):
    """An invalid configuration or recipe; the message starts with the offending key path."""


def recipe_schema(schema: dict) -> dict:
    """The schema of one recipe: ``schema``'s ``#/$defs/recipe``, every key optional."""
    return {"$defs": schema["$defs"], "$ref": "#/$defs/recipe"}


def _filling_validator():
    """Draft 2020-12 validator that fills in ``default`` values (copies) as it descends."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if key not in instance and isinstance(sub, dict) and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties})


def keypath(parts, config: Any = None) -> str:
    """``['ablations', 3, 'sweep', 'key']`` -> ``ablations[dropout].sweep.key`` (group ids for list items)."""
    text, node = "", config
    for part in parts:
        if isinstance(part, int):
            label = str(part)
            if text == "ablations" and isinstance(node, list) and part < len(node):
                gid = node[part].get("id") if isinstance(node[part], dict) else None
                label = gid if isinstance(gid, str) and gid else label
            text += f"[{label}]"
        else:
            text += f".{part}" if text else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return text or "(top level)"


def hint(word: Any, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def message(error: jsonschema.ValidationError, root: Any, prefix: list) -> str:
    """One schema error as ``<key path>: <what is wrong>``; ``prefix`` is the path of ``root``."""
    path = prefix + list(error.absolute_path)
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = [k for k in instance if k not in allowed]
        key = unknown[0] if unknown else "?"
        return (
            f"{keypath(path + [key], root)}: unknown key {key!r}{hint(key, allowed)}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    where = keypath(path, root)
    if kind == "enum":
        return (
            f"{where}: unknown value {instance!r}{hint(instance, value)}; choose one of: {', '.join(map(str, value))}"
        )
    if kind == "type":
        wanted = " or ".join(value) if isinstance(value, list) else value
        got = _JSON_TYPES.get(type(instance), type(instance).__name__)
        return f"{where}: expected {wanted}, got {got} {instance!r}"
    if kind == "required":
        missing = [k for k in value if k not in instance]
        return f"{where}: missing required key {missing[0]!r}"
    if kind == "not" and value == {"multipleOf": 2}:
        return f"{where}: must be odd, got {instance!r}"
    if kind == "const":
        return f"{where}: {error.schema.get('description') or f'must be {value!r}'}, got {instance!r}"
    if kind == "pattern":
        return f"{where}: {instance!r} is not a valid name (must match {value})"
    if kind == "propertyNames":
        return f"{where}: invalid name: {error.message}"
    return f"{where}: {error.message}"


def _raise(errors: list, root: Any, prefix: list, what: str) -> None:
    """ConfigError with the one message, or every message under ``invalid <what>:``."""
    if errors:
        messages = sorted({message(e, root, prefix) for e in errors})
        raise ConfigError(messages[0] if len(messages) == 1 else "\n  ".join([f"invalid {what}:", *messages]))


def check(instance: Any, schema: dict, *, root: Any = None, prefix: list | None = None, fill: bool = True) -> None:
    """Validate ``instance`` (filling defaults in place); ConfigError listing every problem."""
    validator_cls = _filling_validator() if fill else jsonschema.Draft202012Validator
    errors = list(validator_cls(schema).iter_errors(instance))
    _raise(errors, instance if root is None else root, prefix or [], "configuration")


def check_finite(node: Any, root: Any = None, parts: tuple = ()) -> None:
    """ConfigError naming the first NaN or infinite number anywhere in ``node`` (YAML's .nan, .inf),
    which the schema's bounds let through; ``parts`` is the path of ``node`` in ``root``."""
    root = node if root is None else root
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{keypath(parts, root)}: {node} is not a finite number")
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_finite(value, root, (*parts, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_finite(value, root, (*parts, index))


@lru_cache(maxsize=1)
def _recipe_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(recipe_schema(load_schema()))


def check_recipe(recipe: Any) -> None:
    """Check a full or partial recipe against the packaged schema's ``#/$defs/recipe`` (nothing is filled in).

    Raises :class:`ConfigError` (a ``ValueError``) naming the key path, e.g. ``optimizer.lr: ...``.
    """
    check_finite(recipe)
    _raise(list(_recipe_validator().iter_errors(recipe)), recipe, [], "recipe")
    if parts := decreasing_pair(recipe):
        raise ConfigError(f"{keypath(parts)}: min > max in {recipe['augment'][parts[1]][parts[2]]!r}")


def decreasing_pair(recipe: Mapping[str, Any]) -> list | None:
    """Key path of the first ``[min, max]`` pair in ``recipe["augment"]`` whose min exceeds its max: the
    one recipe rule JSON Schema cannot state (call it on a schema-valid recipe)."""
    for index, item in enumerate(recipe.get("augment") or []):
        for key, value in item.items():
            if isinstance(value, list) and len(value) == 2 and value[0] > value[1]:
                return ["augment", index, key]
    return None
