"""Stage ``study``: validate a study configuration and resolve its experiments.

A configuration (``config.yaml``, optionally overlaid with presets) is checked against
``schemas/config.schema.yaml`` (:mod:`ablationlab.schema`; the same file Snakemake's ``validate``
uses, with its defaults filled in), then resolved into the experiment table: the baseline (a full
recipe) and, per ablation group in config order, one experiment per variant (a partial
recipe deep-merged over the group's base) and per sweep value (the base's recipe with one
key set). Anything wrong raises :class:`ConfigError` whose message starts with the key
path (``ablations[dropout].sweep.key: ...``), before any job runs.

Outputs (``docs/contracts.md``, section *Study*): ``experiments.json`` (:func:`resolve`)
and ``report.json`` (:attr:`Study.report`). CLI: ``python -m ablationlab study``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ablationlab import datasets, defaults, io
from ablationlab import recipe as recipes
from ablationlab.credentials import redact
from ablationlab.defaults import SCHEMA_PATH, load_schema
from ablationlab.keypath import lookup, split_key
from ablationlab.schema import (
    ConfigError,
    check,
    check_finite,
    decreasing_pair,
    hint,
    keypath,
    message,
    recipe_schema,
)

# Group ids that would clash with the baseline's experiment id or a rule name (each group's target
# rule is named after its id); the workflow's rules are exactly these (tests/test_study.py checks).
RESERVED_IDS = frozenset(
    {
        "all",
        "baseline",
        "study",
        "prepare_data",
        "summarize",
        "adaptive_look",
        "adaptive_seeds",
        "mlflow_init",
        "track",
        "figures",
        "render_report",
        "publish_report",
    }
)
RESERVED_PREFIXES = ("train_",)  # the per-group train rules train_<id> (and train_<id>_more<j>)
# a group x_more2's train rule would be train_x_more2, group x's third block of seeds (seeds_per_job)
RESERVED_SUFFIX = re.compile(r"_more\d+$")

NAMED_WEIGHTS = ("imagenet", "none")


@dataclass(frozen=True)
class Study:
    """A validated, resolved study."""

    config: dict  # the configuration with every default filled in
    experiments: dict  # results/study/experiments.json
    report: dict  # results/study/report.json


# --------------------------------------------------------------------------- schema


def validate(config: Mapping[str, Any], schema_path: str | Path | None = None) -> dict:
    """A copy of ``config`` checked against the schema, with every default filled in."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"(top level): the configuration must be a mapping, got {type(config).__name__}")
    check_finite(config)
    filled = copy.deepcopy(dict(config))
    check(filled, load_schema(schema_path))
    return filled


# --------------------------------------------------------------------------- resolution


@dataclass
class _Experiment:
    id: str
    group: str
    variant: str
    reference: str | None
    sweep: dict | None
    recipe: dict
    origin: str  # key path of what this experiment sets
    overrides: dict  # the keys it sets (partial recipe)


def _assign(tree: Any, parts: list, value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _nested(parts: list, value: Any) -> Any:
    for part in reversed(parts):
        value = {part: value}
    return value


def _value_name(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (int, str)):
        return str(value)
    return io.canonical_json(value)


class _Resolver:
    def __init__(self, config: dict, schema: dict):
        self.config = config
        self.recipe_schema = recipe_schema(schema)
        self.recipe_validator = jsonschema.Draft202012Validator(self.recipe_schema)
        self.groups = {}
        for index, group in enumerate(config["ablations"]):
            gid = group["id"]
            where = keypath(["ablations", index], config)
            if gid in RESERVED_IDS or gid.startswith(RESERVED_PREFIXES) or RESERVED_SUFFIX.search(gid):
                raise ConfigError(
                    f"{where}.id: {gid!r} is reserved (it names a rule or the baseline); "
                    f"reserved: {', '.join(sorted(RESERVED_IDS))}, ids starting with "
                    f"{' or '.join(RESERVED_PREFIXES)} and ids ending in _more<N> (a train rule of a "
                    "further block of seeds)"
                )
            if gid in self.groups:
                raise ConfigError(
                    f"ablations[{index}].id: duplicate group id {gid!r} "
                    f"(also ablations[{self.groups[gid][0]}]); experiment ids must be unique"
                )
            if not group.get("variants") and "sweep" not in group:
                raise ConfigError(f"{where}: group {gid!r} has no experiments; give it variants or a sweep")
            self.groups[gid] = (index, group)
        baseline = recipes.complete(config["baseline"])
        self.experiments = {
            "baseline": _Experiment(
                "baseline", "baseline", "baseline", None, None, baseline, "baseline", config["baseline"]
            )
        }
        self.by_group: dict[str, list[_Experiment]] = {}
        for gid in self.groups:
            self._group(gid, [])

    def ordered(self) -> list[_Experiment]:
        return [self.experiments["baseline"], *(e for gid in self.groups for e in self.by_group[gid])]

    def _group(self, gid: str, stack: list[str]) -> None:
        if gid in self.by_group:
            return
        index, group = self.groups[gid]
        where = keypath(["ablations", index], self.config)
        if gid in stack:
            cycle = " -> ".join(stack[stack.index(gid) :] + [gid])
            raise ConfigError(f"{where}.base: {group['base']!r} makes a cycle of bases: {cycle}")
        base = group["base"]
        if base != "baseline":
            base_group, sep, _ = base.partition("/")
            if sep and base_group in self.groups:
                self._group(base_group, stack + [gid])
            if base not in self.experiments:
                known = list(self.experiments)
                raise ConfigError(
                    f"{where}.base: unknown experiment {base!r}{hint(base, known)}; "
                    f"known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}"
                )
        parent = self.experiments[base]
        made: list[_Experiment] = []
        for name, partial in (group.get("variants") or {}).items():
            made.append(
                _Experiment(
                    f"{gid}/{name}",
                    gid,
                    name,
                    base,
                    None,
                    recipes.deep_merge(parent.recipe, partial),
                    f"{where}.variants.{name}",
                    partial,
                )
            )
        if "sweep" in group:
            made.extend(self._sweep(gid, where, group["sweep"], parent))
        seen: dict[str, str] = {}
        for exp in made:
            if exp.id in seen:
                raise ConfigError(f"{exp.origin}: duplicate experiment id {exp.id!r} (also {seen[exp.id]})")
            seen[exp.id] = exp.origin
        self.by_group[gid] = made
        self.experiments.update((e.id, e) for e in made)

    def _sweep(self, gid: str, where: str, sweep: dict, parent: _Experiment) -> list[_Experiment]:
        key, parts = sweep["key"], split_key(sweep["key"])
        found, _ = lookup(parent.recipe, parts)
        if not found:
            raise ConfigError(
                f"{where}.sweep.key: {key!r} does not exist in the recipe of base experiment "
                f"{parent.id!r}{self._keyhint(parent.recipe, parts)}"
            )
        label = sweep.get("label") or next(str(p) for p in reversed(parts) if isinstance(p, str))
        made = []
        for j, value in enumerate(sweep["values"]):
            origin = f"{where}.sweep.values[{j}]"
            rec = copy.deepcopy(parent.recipe)
            _assign(rec, parts, value)
            rec = recipes.complete(rec)  # a swept augmentation list or name takes its defaults
            try:
                check(rec, self.recipe_schema, fill=False)
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {value!r} is not a valid {key} ({exc})") from None
            name = f"{label}={_value_name(value)}"
            if not all(c.isalnum() or c in "_.=+-" for c in name):
                raise ConfigError(
                    f"{origin}: value {value!r} gives the experiment name {name!r}, which is not "
                    "usable in a file path; sweep over a scalar key instead"
                )
            made.append(
                _Experiment(
                    f"{gid}/{name}",
                    gid,
                    name,
                    parent.id,
                    {"key": key, "value": value},
                    rec,
                    origin,
                    _nested(parts, value),
                )
            )
        return made

    @staticmethod
    def _keyhint(tree: dict, parts: list) -> str:
        node, done = tree, []
        for part in parts:
            if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node)
            ):
                node, done = node[part], done + [part]
            else:
                break
        if isinstance(node, dict):
            under = ".".join(map(str, done)) or "the recipe"
            missing = parts[len(done)]
            return f"{hint(missing, node)}; keys under {under}: {', '.join(node)}"
        if isinstance(node, list):
            return f"; {'.'.join(map(str, done))} has {len(node)} item(s)"
        return ""

    def origin(self, exp: _Experiment, parts: list) -> str:
        """Key path of the config entry that set ``parts`` in ``exp``'s recipe."""
        while True:
            found, _ = lookup(exp.overrides, parts)
            if found or exp.reference is None:
                suffix = "." + keypath(parts)
                return exp.origin + ("" if exp.sweep and found else suffix)
            exp = self.experiments[exp.reference]


def _train_size(data: dict) -> int | None:
    """Images left for training after the validation split, if the dataset's size is known."""
    pool = datasets.get(data["dataset"]).train_pool
    try:
        datasets.check_val_size(data["val_size"])
        return None if pool is None else pool - datasets.val_count(data["val_size"], pool)
    except ValueError as exc:
        raise ConfigError(f"data.{exc}") from None


def _check_variant(resolver: _Resolver, exp: _Experiment) -> None:
    """The recipe schema on a variant's merged recipe: a rule across keys (weights only for transfer
    models) that the merge over its base broke, although the partial variant alone was valid."""
    errors = sorted(resolver.recipe_validator.iter_errors(exp.recipe), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        detail = message(errors[0], exp.recipe, []).partition(": ")[2]
        where = resolver.origin(exp, list(errors[0].absolute_path))
        raise ConfigError(f"{where}: {detail} in experiment {exp.id!r}")


def _check_files_and_sizes(config: dict, resolver: _Resolver, experiments: list[_Experiment]) -> None:
    data = config["data"]
    if data["dataset"] == "imagefolder" and not Path(data["root"]).is_dir():
        raise ConfigError(
            f"data.root: image folder {data['root']!r} does not exist (dataset imagefolder; "
            "expected root/train/<class>/* and root/test/<class>/*)"
        )
    n_train = _train_size(data)
    for exp in experiments:
        if exp.reference is not None and exp.sweep is None:  # a variant (sweep values are checked as they are made)
            _check_variant(resolver, exp)
        if parts := decreasing_pair(exp.recipe):
            pair = exp.recipe["augment"][parts[1]][parts[2]]
            raise ConfigError(f"{resolver.origin(exp, parts)}: min > max in {pair!r} (experiment {exp.id!r})")
        batch = exp.recipe["batch_size"]
        if n_train is not None and batch > n_train:
            raise ConfigError(
                f"{resolver.origin(exp, ['batch_size'])}: batch_size {batch} is larger than the "
                f"train split of {data['dataset']} ({n_train} images) in experiment {exp.id!r}"
            )
        weights = exp.recipe["model"]["weights"]
        if weights not in NAMED_WEIGHTS and ("{" in weights or "}" in weights):  # a Snakemake input: a pattern
            raise ConfigError(
                f"{resolver.origin(exp, ['model', 'weights'])}: weights file {weights!r} has braces, "
                "which Snakemake reads as wildcards in an input path; rename the file"
            )
        if weights not in NAMED_WEIGHTS and not Path(weights).is_file():
            raise ConfigError(
                f"{resolver.origin(exp, ['model', 'weights'])}: weights file {weights!r} does not "
                f"exist (experiment {exp.id!r}; use imagenet, none or the path of a state_dict file)"
            )


def planned_looks(n_seeds: int, max_seeds: int, step: int) -> int:
    """Looks of an adaptive study: the initial one plus one per ``step`` seeds up to ``max_seeds``."""
    return 1 + math.ceil(max(max_seeds - n_seeds, 0) / step)


def _adaptive(config: dict) -> dict | None:
    """The study table's ``adaptive`` block (None when off); ConfigError if max_seeds < len(seeds)."""
    adaptive, n_seeds = config["adaptive"], len(config["seeds"])
    if not adaptive["enabled"]:
        return None
    if adaptive["max_seeds"] < n_seeds:
        raise ConfigError(
            f"adaptive.max_seeds: {adaptive['max_seeds']} is fewer than the {n_seeds} initial seeds "
            f"(seeds: {config['seeds']}); max_seeds must be at least len(seeds)"
        )
    return {
        "max_seeds": adaptive["max_seeds"],
        "step": adaptive["step"],
        "looks": planned_looks(n_seeds, adaptive["max_seeds"], adaptive["step"]),
    }


def load(config: Mapping[str, Any], schema_path: str | Path | None = None) -> Study:
    """Validate ``config`` and resolve its experiments; ConfigError names the key path of any problem."""
    full = validate(config, schema_path)
    resolver = _Resolver(full, load_schema(schema_path))
    experiments = resolver.ordered()
    _check_files_and_sizes(full, resolver, experiments)
    adaptive = _adaptive(full)
    table = {
        "dataset": full["data"]["dataset"],
        "seeds": list(full["seeds"]),
        "statistics": defaults.statistics(full["statistics"]),  # looks: 1, or the planned looks below
        "experiments": [
            {
                "id": e.id,
                "group": e.group,
                "variant": e.variant,
                "reference": e.reference,
                "sweep": e.sweep,
                "recipe": e.recipe,
            }
            for e in experiments
        ],
    }
    if adaptive:  # the verdicts' per-look level is alpha / looks (Bonferroni split over the planned looks)
        table["adaptive"] = adaptive
        table["statistics"]["looks"] = adaptive["looks"]
    shown = copy.deepcopy(full)
    shown["tracking"]["uri"] = redact(shown["tracking"]["uri"])
    report = {
        "name": full["study"]["name"],
        "title": full["report"]["title"] or full["study"]["title"],
        "author": full["study"]["author"],
        "dataset": table["dataset"],
        "seeds": table["seeds"],
        "groups": [
            {
                "id": gid,
                "title": group["title"],
                "notes": group["notes"],
                "reference": group["base"],
                "sweep_key": group["sweep"]["key"] if "sweep" in group else None,
                "experiments": [e.id for e in resolver.by_group[gid]],
            }
            for gid, (_, group) in resolver.groups.items()
        ],
        "config": shown,
        "config_hash": hashlib.sha256(io.canonical_json(shown).encode()).hexdigest(),
        "tracking": {**shown["tracking"], "experiment": full["tracking"]["experiment"] or full["study"]["name"]},
    }
    return Study(full, table, report)


def resolve(config: Mapping[str, Any], schema_path: str | Path | None = None) -> dict:
    """The experiment table (``experiments.json``) of a configuration; ConfigError if it is invalid."""
    return load(config, schema_path).experiments


def read_config(paths) -> dict:
    """YAML files merged in order, as Snakemake merges ``--configfile`` overlays (mappings merge, the rest replaces)."""
    merged: dict = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a configuration file must be a mapping at top level")
        merged = recipes.deep_merge(merged, data)
    return merged


# --------------------------------------------------------------------------- CLI


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab study",
        description="Validate a study configuration and list its experiments (what the pipeline would run).",
        epilog="Example: python -m ablationlab study config.yaml presets/quick.yaml --out results/study",
    )
    parser.add_argument(
        "configs",
        nargs="*",
        default=["config.yaml"],
        metavar="CONFIG",
        help="config.yaml, then overlays merged over it like --configfile (default: config.yaml)",
    )
    parser.add_argument("--schema", default=None, help=f"schema file (default: {SCHEMA_PATH})")
    parser.add_argument("--out", default=None, help="write experiments.json and report.json into this directory")
    args = parser.parse_args(argv)
    try:
        study = load(read_config(args.configs), args.schema)
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        io.write_json(Path(args.out) / "experiments.json", study.experiments)
        io.write_json(Path(args.out) / "report.json", study.report)
    experiments, seeds = study.experiments["experiments"], study.experiments["seeds"]
    for exp in experiments:
        print(f"{exp['id']:<40} reference={exp['reference'] or '-':<24} epochs={exp['recipe']['epochs']}")
    print(
        f"{len(experiments)} experiments x {len(seeds)} seeds = {len(experiments) * len(seeds)} runs "
        f"on {study.experiments['dataset']}"
    )
    return 0
