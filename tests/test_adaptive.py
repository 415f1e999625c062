"""Adaptive seeding: the procedure (ablationlab.adaptive), its configuration and its error control."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import copy_workflow, jobs_of, plan, snakemake, stage_jobs

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
    new, reasons = step(seeds, [row("a/x", "undecided", mde=math.nan)], sequence=[0, 1, 2, 3])
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
    for seeds in last["seeds"].values():
        assert len(seeds) <= 7 and seeds == adaptive.seed_sequence([0, 1, 2], 7)[: len(seeds)]
    if last["verdicts"]["null/v1"]["verdict"] == "undecided":
        assert len(last["seeds"]["null/v1"]) == 7 and last["reasons"]["null/v1"][-1].startswith("capped")


@pytest.mark.slow  # ~1000 comparisons through stats.compare (its power analysis: ~30 ms each)
def test_false_positive_rate_stays_within_alpha_under_repeated_looks():
    """Null studies through the real procedure: FPR <= alpha + 3 Monte-Carlo SE (at alpha), fixed and
    adaptive (benchmarks/error_control.py runs many more)."""
    module, _ = null_study()
    studies = 60
    for design in (False, True):
        result = module.simulate(studies, adaptive_design=design, max_seeds=7, rng_seed=3)
        assert result["fpr"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / studies), result
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


@pytest.mark.parametrize(
    "block, message",
    [
        ({"max_seeds": 2}, "adaptive.max_seeds: 2 is fewer than the 3 initial seeds"),
        ({"step": 0}, "adaptive.step: 0 is less than the minimum of 1"),
        ({"steps": 2}, "adaptive.steps: unknown key 'steps' (did you mean 'step'?)"),
    ],
)
def test_bad_adaptive_settings_name_the_key(block, message):
    with pytest.raises(study.ConfigError, match=re.escape(message)):
        study.load(config(**block))


def test_seed_plan_gives_each_experiment_its_seeds():
    table = study.resolve(config())
    plan = {
        "seeds": {e["id"]: [0, 1, 2, 3, 4] if e["id"] == "baseline" else [0, 1, 2] for e in table["experiments"]},
        "reasons": {"baseline": ["3 initial", "+2 at look 1: ..."]},
    }
    planned = with_seed_plan(table, plan)
    by_id = {e["id"]: e for e in planned["experiments"]}
    assert experiment_seeds(planned, by_id["baseline"]) == [0, 1, 2, 3, 4]
    assert experiment_seeds(planned, by_id["batch_norm/bn"]) == [0, 1, 2]
    assert experiment_seeds(table, table["experiments"][0]) == [0, 1, 2]
    assert by_id["baseline"]["seed_reasons"][-1] == "+2 at look 1: ..."
    with pytest.raises(SummaryError, match="no seeds for experiments"):
        with_seed_plan(table, {"seeds": {}, "reasons": {}})


# --------------------------------------------------------------------------- end to end


ADAPTIVE_STUDY = {
    "study": {"name": "adaptive-test", "title": "Adaptive seeding test"},
    "seeds": [0, 1, 2],
    "adaptive": {"enabled": True, "max_seeds": 5, "step": 2},  # 2 looks, each at alpha / 2
    "baseline": {"model": {"widths": [4], "kernel_size": 3, "hidden": []}, "epochs": 3, "batch_size": 128},
    "ablations": [
        {"id": "learning_rate", "title": "LR", "sweep": {"key": "optimizer.lr", "label": "lr", "values": [0.0001]}},
        {"id": "batch", "title": "Batch", "variants": {"b127": {"batch_size": 127}}},  # no real effect
    ],
}


@pytest.mark.slow
def test_adaptive_study_end_to_end(tmp_path):
    """Seeds go only to undecided comparisons, up to the cap; a rerun plans nothing; a changed
    recipe re-trains only its own sequence."""
    from ablationlab.layout import seed_blocks

    work = copy_workflow(tmp_path / "wf")
    (work / "adaptive.yaml").write_text(yaml.safe_dump(ADAPTIVE_STUDY, sort_keys=False))
    target = ["--configfile", "presets/smoke.yaml", "adaptive.yaml", "--", "results/adaptive/seeds.json"]
    proc = snakemake(work, *target)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    looks = sorted((work / "results/adaptive").glob("look*.json"))
    final = json.loads((work / "results/adaptive/seeds.json").read_text())
    assert final["done"] and final["looks"] == 2 and len(looks) <= 2
    before = {e: [0, 1, 2] for e in final["seeds"]}
    for path in looks:  # every look: decided comparisons keep their seeds, undecided ones grow (both sides)
        result = json.loads(path.read_text())
        for exp, verdict in result["verdicts"].items():
            grown = len(result["seeds"][exp]) > len(before[exp])
            assert grown == (verdict["verdict"] not in ("significant", "no_effect") and len(before[exp]) < 5)
            if grown:
                assert result["seeds"][exp] == result["seeds"]["baseline"][: len(result["seeds"][exp])]
        before = result["seeds"]
    assert all(len(s) <= 5 for s in final["seeds"].values())
    assert final["seeds"]["learning_rate/lr=0.0001"] == [0, 1, 2]  # a large effect: decided at once
    assert final["seeds"]["batch/b127"] == final["seeds"]["baseline"] == [0, 1, 2, 3, 4]  # undecided: capped
    # the summary: each experiment's own seeds
    summary = work / "summary"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablationlab",
            "summarize",
            "--study",
            "results/study/experiments.json",
            "--runs",
            "results/runs",
            "--out",
            str(summary),
            "--seeds",
            "results/adaptive/seeds.json",
        ],
        check=False,
        cwd=work,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(work / "src")},
    )
    assert cli.returncode == 0, cli.stderr
    table = pd.read_csv(summary / "experiments.csv").set_index("experiment")
    assert {e: int(table.loc[e, "n"]) for e in final["seeds"]} == {e: len(s) for e, s in final["seeds"].items()}
    assert (table["n"] == table["n_seeds"]).all()
    # nothing left to do, also for the whole study: no further seed is planned
    again = snakemake(work, "-n", *target)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert stage_jobs(plan(work, "--configfile", "presets/smoke.yaml", "adaptive.yaml")) == set()
    # a changed recipe: only its own runs train again, from its first seeds
    ADAPTIVE_STUDY["ablations"][1]["variants"]["b127"] = {"batch_size": 126}
    (work / "adaptive.yaml").write_text(yaml.safe_dump(ADAPTIVE_STUDY, sort_keys=False))
    rerun = snakemake(work, *target)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-6000:]
    trained = {job[1:] for job in jobs_of(rerun.stdout + rerun.stderr) if job[0].startswith("train_")}
    changed = json.loads((work / "results/adaptive/seeds.json").read_text())["seeds"]["batch/b127"]
    blocks = [b for b in seed_blocks([0, 1, 2], {"max_seeds": 5, "step": 2}) if set(b) <= set(changed)]
    assert trained == {("batch/b127", "-".join(map(str, b))) for b in blocks}  # one job per block of seeds
    assert changed[:3] == [0, 1, 2]


def test_report_table_of_seeds_per_experiment():
    from ablationlab.report import seed_plan_table

    table = study.resolve(config(max_seeds=5))
    assert seed_plan_table(table, 3) is None  # no seed plan: no table
    plan = {
        "seeds": {e["id"]: [0, 1, 2, 3, 4] if e["id"] != "batch_norm/bn" else [0, 1, 2] for e in table["experiments"]},
        "reasons": {"dropout/p=0.5": ["3 initial", "+2 at look 1: dropout/p=0.5 vs baseline undecided"]},
        "verdicts": {"batch_norm/bn": {"verdict": "significant"}, "dropout/p=0.5": {"verdict": "undecided"}},
        "procedure": adaptive.PROCEDURE,
        "looks": 2,
        "look": 2,
        "per_look_alpha": 0.025,
    }
    shown = seed_plan_table(with_seed_plan(table, plan), 3)
    assert shown["procedure"] == "Bonferroni split over planned looks" and shown["table_number"] == 3
    assert shown["looks"] == 2 and shown["max_seeds"] == 5 and shown["step"] == 2
    rows = {r["experiment"]: r for r in shown["rows"]}
    assert rows["batch_norm/bn"] == {
        "experiment": "batch_norm/bn",
        "n": 3,
        "seeds": "0, 1, 2",
        "reasons": [],
        "verdict": "significant",
    }
    assert rows["dropout/p=0.5"]["n"] == 5 and rows["dropout/p=0.5"]["reasons"][-1].startswith("+2 at look 1")
