"""Adaptive seeding: the procedure (ablationlab.adaptive), its configuration and its error control."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from ablationlab import adaptive, study
from ablationlab.summarize import SummaryError, experiment_seeds, with_seed_plan

REPO = Path(__file__).resolve().parents[1]

SEQUENCE = adaptive.seed_sequence([0, 1, 2], 7)


def row(experiment, verdict, reference="baseline", mde=0.021):
    return {"experiment": experiment, "reference": reference, "verdict": verdict, "mde_acc": mde}


def step(seeds, rows, **kw):
    options = {"sequence": SEQUENCE, "step": 2, "max_seeds": 7, "look_number": 1, "min_effect": 0.01} | kw
    return adaptive.next_seeds(seeds, rows, **options)


def test_seed_sequence_continues_after_the_largest_seed():
    assert SEQUENCE == [0, 1, 2, 3, 4, 5, 6]
    assert adaptive.seed_sequence([5, 1], 4) == [5, 1, 6, 7]


def test_only_undecided_comparisons_get_seeds_on_both_sides():
    seeds = {e: [0, 1, 2] for e in ("baseline", "a/x", "b/y", "c/z")}
    rows = [row("a/x", "significant"), row("b/y", "undecided"), row("c/z", "no_effect")]
    new, reasons = step(seeds, rows)
    assert new == {"baseline": [0, 1, 2, 3, 4], "a/x": [0, 1, 2], "b/y": [0, 1, 2, 3, 4], "c/z": [0, 1, 2]}
    assert reasons == {
        "b/y": "+2 at look 1: b/y vs baseline undecided (MDE 2.1 pp > 1.0 pp)",
        "baseline": "+2 at look 1: b/y vs baseline undecided (MDE 2.1 pp > 1.0 pp)",
    }


def test_untestable_comparisons_count_as_undecided():
    seeds = {"baseline": [0], "a/x": [0]}
    new, reasons = step(seeds, [row("a/x", "", mde=math.nan)], sequence=[0, 1, 2, 3])
    assert new == {"baseline": [0, 1, 2], "a/x": [0, 1, 2]}
    assert "not testable yet" in reasons["a/x"]


def test_a_reference_ahead_keeps_its_seeds_and_the_variant_takes_the_same_ones():
    seeds = {"baseline": [0, 1, 2, 3, 4], "a/x": [0, 1, 2], "b/y": [0, 1, 2, 3, 4]}
    new, reasons = step(seeds, [row("a/x", "undecided"), row("b/y", "undecided")], look_number=2)
    assert new["a/x"] == [0, 1, 2, 3, 4] == new["baseline"][:5]
    assert new["b/y"] == new["baseline"] == [0, 1, 2, 3, 4, 5, 6]
    assert reasons["baseline"].startswith("+2 at look 2: a/x vs baseline undecided")
    assert "b/y vs baseline" in reasons["baseline"]


def test_the_cap_is_respected_and_said():
    seeds = {"baseline": [0, 1, 2, 3, 4, 5], "a/x": [0, 1, 2, 3, 4, 5], "b/y": [0, 1, 2, 3, 4, 5, 6]}
    new, reasons = step(seeds, [row("a/x", "undecided"), row("b/y", "undecided")])
    assert len(new["a/x"]) == len(new["baseline"]) == 7 and new["b/y"] == seeds["b/y"]  # +1, not +2: the cap
    assert reasons["a/x"].startswith("+1 at look 1")
    assert reasons["b/y"] == "capped at max_seeds (7): b/y vs baseline undecided (MDE 2.1 pp > 1.0 pp)"


def null_study(variants=2, seeds=3, max_seeds=7, step_=2, min_effect=0.01):
    spec = importlib.util.spec_from_file_location("error_control", REPO / "benchmarks" / "error_control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.null_study(variants, seeds, max_seeds, step_, 0.05, min_effect)


def test_look_sequence_decides_a_large_effect_at_once_and_caps_the_rest():
    module, table = null_study()
    rng = np.random.default_rng(1)
    accuracy = module.null_accuracy(table, rng, 7)
    accuracy["null/v0"] = {s: a - 0.2 for s, a in accuracy["null/v0"].items()}  # a real, large effect
    results, previous = [], None
    while previous is None or not previous["done"]:
        previous = adaptive.look(table, accuracy, len(results) + 1, previous)
        results.append(previous)
    last = results[-1]
    assert len(results) <= table["statistics"]["looks"] == 3
    assert last["verdicts"]["null/v0"]["verdict"] == "significant" and last["seeds"]["null/v0"] == [0, 1, 2]
    assert last["reasons"]["null/v0"] == ["3 initial"]
    assert last["per_look_alpha"] == pytest.approx(0.05 / 3) and last["procedure"] == adaptive.PROCEDURE
    for exp, seeds in last["seeds"].items():
        assert len(seeds) <= 7 and seeds == adaptive.seed_sequence([0, 1, 2], 7)[:len(seeds)]
    if last["verdicts"]["null/v1"]["verdict"] == "undecided":
        assert len(last["seeds"]["null/v1"]) == 7 and last["reasons"]["null/v1"][-1].startswith("capped")


def test_false_positive_rate_stays_within_alpha_under_repeated_looks():
    module, _ = null_study()
    for design in (False, True):
        result = module.simulate(150, adaptive_design=design, max_seeds=7, rng_seed=3)
        assert result["fpr"] <= 0.05 + 3 * max(result["se"], math.sqrt(0.05 * 0.95 / 150)), result
        if design:
            assert result["looks"] == 3 and result["mean_seeds"] > 3


# --------------------------------------------------------------------------- configuration and plans


def config(**adaptive_block):
    cfg = study.read_config([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"])
    return cfg | {"seeds": [0, 1, 2], "adaptive": {"enabled": True, **adaptive_block}}


def test_enabled_study_table_carries_the_planned_looks():
    table = study.resolve(config(max_seeds=10, step=2))
    assert table["adaptive"] == {"max_seeds": 10, "step": 2, "looks": 5}
    assert table["statistics"]["looks"] == 5
    off = study.resolve(config(enabled=False))
    assert "adaptive" not in off and (off.get("statistics") or {}).get("looks", 1) == 1


@pytest.mark.parametrize("block, message", [
    ({"max_seeds": 2}, "adaptive.max_seeds: 2 is fewer than the 3 initial seeds"),
    ({"step": 0}, "adaptive.step: 0 is less than the minimum of 1"),
    ({"steps": 2}, "adaptive.steps: unknown key 'steps' (did you mean 'step'?)"),
])
def test_bad_adaptive_settings_name_the_key(block, message):
    with pytest.raises(study.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        study.load(config(**block))


def test_seed_plan_gives_each_experiment_its_seeds():
    table = study.resolve(config())
    plan = {"seeds": {e["id"]: [0, 1, 2, 3, 4] if e["id"] == "baseline" else [0, 1, 2] for e in table["experiments"]},
            "reasons": {"baseline": ["3 initial", "+2 at look 1: ..."]}}
    planned = with_seed_plan(table, plan)
    by_id = {e["id"]: e for e in planned["experiments"]}
    assert experiment_seeds(planned, by_id["baseline"]) == [0, 1, 2, 3, 4]
    assert experiment_seeds(planned, by_id["batch_norm/bn"]) == [0, 1, 2]
    assert experiment_seeds(table, table["experiments"][0]) == [0, 1, 2]
    assert by_id["baseline"]["seed_reasons"][-1] == "+2 at look 1: ..."
    with pytest.raises(SummaryError, match="no seeds for experiments"):
        with_seed_plan(table, {"seeds": {}, "reasons": {}})
