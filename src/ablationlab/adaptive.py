"""Adaptive seeding: more seeds only for the comparisons that are still undecided.

A study with ``adaptive.enabled`` starts every experiment on its ``seeds``. After each
*look*, every comparison (an experiment against its reference) whose verdict is
``undecided`` (:func:`ablationlab.stats.verdict`: not significant after Holm at the
per-look level alpha/looks, and a minimum detectable effect above ``min_effect``) gets
``step`` more seeds for the variant *and* its reference, the next seeds of one shared
sequence (``seeds``, then the integers after its largest), so the pairs stay paired.
This repeats until every comparison is decided or has ``max_seeds`` seeds.

Error control: Bonferroni split over the planned looks. A comparison is tested at most
``looks = 1 + ceil((max_seeds - len(seeds)) / step)`` times (its seed count only takes
the values ``len(seeds) + j * step``, capped at ``max_seeds``); each test runs at level
alpha/looks, so the chance of a false "significant" over all looks stays <= alpha, and
Holm within the group keeps that family-wise (benchmarks/error_control.py simulates it).

Pure functions over ``{experiment: {seed: accuracy}}``; the workflow runs one look per
job (rule ``adaptive_look``, a checkpoint) through :func:`cli`. File: ``look<k>.json``
(:func:`look`), the last of which (``done``) is copied to ``results/adaptive/seeds.json``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablationlab import defaults, io, layout, summarize
from ablationlab.formats import pp
from ablationlab.layout import seed_sequence

PROCEDURE = "Bonferroni split over planned looks"
DECIDED = ("significant", "no_effect")


def assess(study: Mapping[str, Any], accuracy: Mapping[str, Mapping[int, float]]) -> list[dict[str, Any]]:
    """Every comparison on the accuracies so far, exactly as experiments.csv has it (stats.compare,
    Holm within each group, stats.verdict at alpha/looks): one row per experiment with a reference."""
    rows = [
        {"experiment": e["id"], "reference": e["reference"], "group": e["group"], "n": len(accuracy.get(e["id"], {}))}
        for e in study["experiments"]
    ]
    summarize.add_comparisons(rows, study, {e["id"]: dict(accuracy.get(e["id"], {})) for e in study["experiments"]})
    return [row for row in rows if row["reference"]]


def why_undecided(row: Mapping[str, Any], min_effect: float) -> str:
    """``dropout/p=0.5 vs baseline undecided (MDE 2.1 pp > 1.0 pp)``."""
    head = f"{row['experiment']} vs {row['reference']}"
    if math.isnan(row["mde_acc"]):
        return f"{head} not testable yet (too few seeds or no spread)"
    return f"{head} undecided (MDE {pp(row['mde_acc'], signed=False)} pp > {pp(min_effect, signed=False)} pp)"


def next_seeds(
    seeds: Mapping[str, list[int]],
    rows: list[dict[str, Any]],
    *,
    sequence: list[int],
    step: int,
    max_seeds: int,
    look_number: int,
    min_effect: float,
) -> tuple[dict, dict]:
    """Seeds after a look, and the reasons of every addition or cap (``{experiment: [text]}``).

    Each undecided comparison below ``max_seeds`` takes both sides to ``n + step`` seeds
    (capped) of ``sequence``; a side that already has them keeps its seeds.
    """
    new = {e: list(s) for e, s in seeds.items()}
    why: dict[str, list[str]] = {}
    for row in rows:
        if row["verdict"] in DECIDED:
            continue
        variant, reference = row["experiment"], row["reference"]
        n = len(seeds[variant])
        if n >= max_seeds:
            why.setdefault(variant, []).append(f"capped at max_seeds ({max_seeds}): {why_undecided(row, min_effect)}")
            continue
        target = min(n + step, max_seeds)
        for exp in (variant, reference):
            if len(new[exp]) < target:
                new[exp] = sequence[:target]
            why.setdefault(exp, []).append(why_undecided(row, min_effect))
    reasons = {}
    for exp, texts in why.items():
        added = len(new[exp]) - len(seeds[exp])
        if added:
            reasons[exp] = f"+{added} at look {look_number}: " + "; ".join(texts)
        elif texts[0].startswith("capped"):
            reasons[exp] = texts[0]
    return new, reasons


def look(
    study: Mapping[str, Any],
    accuracy: Mapping[str, Mapping[int, float]],
    number: int,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One look: the verdicts on the current seeds and the seeds (with reasons) for the next look.

    ``previous`` is the last look's result (None at look 1); ``done`` when no seed was added.
    """
    settings, adaptive = defaults.statistics(study.get("statistics")), study["adaptive"]
    if previous is None:
        seeds = {e["id"]: list(study["seeds"]) for e in study["experiments"]}
        reasons = {e: [f"{len(study['seeds'])} initial"] for e in seeds}
    else:
        seeds, reasons = previous["seeds"], {e: list(r) for e, r in previous["reasons"].items()}
    have = {e: {s: a for s, a in accuracy.get(e, {}).items() if s in seeds[e]} for e in seeds}
    rows = assess(study, have)
    new, added = next_seeds(
        seeds,
        rows,
        sequence=seed_sequence(study["seeds"], adaptive["max_seeds"]),
        step=adaptive["step"],
        max_seeds=adaptive["max_seeds"],
        look_number=number,
        min_effect=settings["min_effect"],
    )
    for exp, text in added.items():
        if not (text.startswith("capped") and any(r.startswith("capped") for r in reasons[exp])):  # said once
            reasons[exp].append(text)
    return {
        "look": number,
        "looks": settings["looks"],
        "procedure": PROCEDURE,
        "per_look_alpha": settings["alpha"] / settings["looks"],
        "done": new == seeds,
        "seeds": new,
        "reasons": reasons,
        "verdicts": {
            r["experiment"]: {
                "verdict": r["verdict"],
                "n": r["n"],
                "delta": r["delta_acc"],
                "p_value_holm": r["p_value_holm"],
                "mde_acc": r["mde_acc"],
            }
            for r in rows
        },
    }


def read_accuracy(study: Mapping[str, Any], runs_dir: str | Path, seeds: Mapping[str, list[int]]) -> dict:
    """``{experiment: {seed: test accuracy}}`` from each run's metrics.json (seeds without a finite one left out)."""
    accuracy: dict[str, dict[int, float]] = {}
    for exp in study["experiments"]:
        found = {}
        for seed in seeds[exp["id"]]:
            value = io.read_json(layout.run_dir(runs_dir, exp["id"], seed) / "metrics.json").get("test_acc")
            if value is not None and math.isfinite(value):
                found[seed] = float(value)
        accuracy[exp["id"]] = found
    return accuracy


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab adaptive",
        description="One look of adaptive seeding: verdicts so far and the next seeds.",
    )
    parser.add_argument("--study", required=True, help="results/study/experiments.json (with its adaptive block)")
    parser.add_argument("--runs", required=True, help="results/runs")
    parser.add_argument("--look", required=True, type=int, help="the look's number (1 = the initial seeds)")
    parser.add_argument("--previous", help="the previous look's file (look > 1)")
    parser.add_argument("--out", required=True, help="results/adaptive/look<k>.json")
    args = parser.parse_args(argv)
    study = io.read_json(args.study)
    if "adaptive" not in study:
        parser.error(f"{args.study}: the study has no adaptive block (adaptive.enabled is false)")
    if (args.look > 1) != bool(args.previous):
        parser.error("--previous is required after look 1, and only then")
    previous = io.read_json(args.previous) if args.previous else None
    seeds = previous["seeds"] if previous else {e["id"]: study["seeds"] for e in study["experiments"]}
    result = look(study, read_accuracy(study, args.runs, seeds), args.look, previous)
    io.write_json(args.out, result)
    print(f"look {args.look}: {'done' if result['done'] else 'more seeds'}")
    return 0
