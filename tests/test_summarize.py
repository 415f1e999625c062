"""summarize + stats: statistics against scipy and known numbers; real digits runs → runs.csv / experiments.csv
(the ``study_runs`` fixture of conftest.py: a small real study, also used by test_figures.py and test_report.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from ablationlab import io, report, stats, summarize

# ----------------------------------------------------------------------------- statistics


def test_stats_match_scipy_on_known_numbers():
    a, b = [0.90, 0.92, 0.91], [0.88, 0.87, 0.89]
    d = stats.describe(a)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.91) and d["std"] == pytest.approx(0.01)
    assert (d["min"], d["max"]) == (0.90, 0.92)
    # t(0.975, 2) = 4.302653; half width = 4.302653 * 0.01 / sqrt(3)
    assert d["ci_low"] == pytest.approx(0.91 - 4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    assert d["ci_high"] == pytest.approx(0.91 + 4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(st.t.interval(0.95, 2, loc=np.mean(a), scale=st.sem(a)))
    assert d["std"] == pytest.approx(np.std(a, ddof=1))

    w = stats.welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert w["delta"] == pytest.approx(0.03)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["p_value"] == pytest.approx(0.0213116, abs=1e-6)
    assert w["df"] == pytest.approx(4.0)
    half = 2.776445 * math.sqrt(0.01**2 / 3 + 0.01**2 / 3)  # t(0.975, 4)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-6)


def test_welch_with_unequal_sizes_and_variances():
    a, b = [0.71, 0.74, 0.69, 0.75], [0.70, 0.66]
    w, ref = stats.welch(a, b), st.ttest_ind(a, b, equal_var=False)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["df"] == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.95)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_undefined_statistics_are_nan():
    one = stats.describe([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    assert math.isnan(stats.describe([])["mean"])
    assert math.isnan(stats.welch([0.5], [0.4, 0.6])["p_value"])
    assert stats.welch([0.5], [0.4, 0.6])["delta"] == pytest.approx(0.0)
    same = stats.welch([0.9, 0.9], [0.8, 0.8])  # no spread: no test, but a difference
    assert same["delta"] == pytest.approx(0.1) and math.isnan(same["p_value"])
    assert stats.t_interval([0.7, 0.7]) == (0.7, 0.7)
    assert math.isnan(stats.describe([1.0, float("nan")])["mean"])


def test_status_aggregation():
    assert summarize._status(["finished"] * 3) == "finished"
    assert summarize._status(["diverged", "finished", "finished"]) == "diverged (1/3)"
    assert summarize._status(["diverged"] * 2) == "diverged"
    assert summarize._status(["early_stopped"] * 2) == "early_stopped"
    assert summarize._status(["early_stopped", "finished"]) == "early_stopped (1/2)"
    assert summarize._status(["missing", "finished"]) == "incomplete (1/2)"


def _synthetic(accs: dict, statistics: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """A study table and its runs.csv frame from ``{experiment: {seed: test_acc}}`` (no training)."""
    refs = {"baseline": None, "a/x": "baseline", "a/y": "baseline", "b/z": "a/x"}
    study = {
        "dataset": "digits",
        "seeds": [0, 1, 2, 3],
        "experiments": [
            {
                "id": e,
                "group": e.split("/")[0],
                "variant": e.rpartition("/")[2],
                "reference": ref,
                "sweep": None,
                "recipe": {},
            }
            for e, ref in refs.items()
        ],
    }
    if statistics:
        study["statistics"] = statistics
    rows = [
        {
            "experiment": e,
            "group": e.split("/")[0],
            "seed": seed,
            "status": "finished" if seed in accs[e] else "missing",
            "test_acc": accs[e].get(seed, math.nan),
            "test_loss": 0.3,
            "epochs_run": 2,
            "best_epoch": 1,
            "params": 100,
            "wall_seconds": 1.0,
        }
        for e in refs
        for seed in study["seeds"]
    ]
    return study, pd.DataFrame(rows, columns=summarize.RUN_COLUMNS)


SYNTHETIC = {
    "baseline": {0: 0.90, 1: 0.92, 2: 0.91, 3: 0.93},
    "a/x": {0: 0.93, 1: 0.95, 2: 0.93, 3: 0.96},
    "a/y": {0: 0.90, 1: 0.93, 2: 0.90, 3: 0.94},
    "b/z": {0: 0.94, 1: 0.95, 2: 0.95},
}


def test_comparisons_are_paired_by_seed_and_corrected_per_group():
    settings = {"alpha": 0.1, "power": 0.9, "min_effect": 0.02, "looks": 2}
    study, runs = _synthetic(SYNTHETIC, settings)
    exps = summarize.aggregate(study, runs).set_index("experiment")
    assert list(exps.columns) == summarize.EXPERIMENT_COLUMNS[1:]
    pairs = {"a/x": ("baseline", [0, 1, 2, 3]), "a/y": ("baseline", [0, 1, 2, 3]), "b/z": ("a/x", [0, 1, 2])}
    for e, (ref, shared) in pairs.items():
        v, r = [SYNTHETIC[e][s] for s in shared], [SYNTHETIC[ref][s] for s in shared]
        t = st.ttest_rel(v, r)
        ci = t.confidence_interval(1 - 0.1 / 2)  # alpha split over 2 planned looks
        row = exps.loc[e]
        assert row["test"] == "paired_t" and row["n_pairs"] == len(shared) and row["effect_size_kind"] == "d_z"
        assert row["p_value"] == pytest.approx(t.pvalue)
        assert (row["delta_acc"], row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx(
            (np.mean(v) - np.mean(r), ci.low, ci.high)
        )
        sd = np.std(np.subtract(v, r), ddof=1)
        mde = TTestPower().solve_power(effect_size=None, nobs=len(shared), alpha=0.05, power=0.9) * sd
        assert row["mde_acc"] == pytest.approx(mde, rel=1e-5)
    holm_a = multipletests([exps.loc["a/x", "p_value"], exps.loc["a/y", "p_value"]], method="holm")[1]
    assert list(exps.loc[["a/x", "a/y"], "p_value_holm"]) == pytest.approx(list(holm_a))
    assert exps.loc["b/z", "p_value_holm"] == pytest.approx(exps.loc["b/z", "p_value"])  # a family of one
    assert list(exps.loc[["a/x", "a/y", "b/z"], "holm_family"]) == [2, 2, 1]
    q = st.false_discovery_control(exps.loc[["a/x", "a/y", "b/z"], "p_value"].to_numpy())
    assert list(exps.loc[["a/x", "a/y", "b/z"], "q_value"]) == pytest.approx(list(q))
    for e in pairs:
        row = exps.loc[e]
        assert row["verdict"] == stats.verdict(row["p_value_holm"], row["mde_acc"], alpha=0.1, looks=2, min_effect=0.02)
    assert exps.loc["a/x", "verdict"] == "significant"  # +2.75 pp on every seed
    base = exps.loc["baseline"]
    assert pd.isna(base["test"]) or base["test"] == ""
    assert base["verdict"] == "" and math.isnan(base["p_value_holm"]) and math.isnan(base["q_value"])


def test_statistics_default_without_the_study_block():
    study, runs = _synthetic(SYNTHETIC)
    row = summarize.aggregate(study, runs).set_index("experiment").loc["a/y"]
    ci = st.ttest_rel([SYNTHETIC["a/y"][s] for s in range(4)], [SYNTHETIC["baseline"][s] for s in range(4)])
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx(tuple(ci.confidence_interval(0.95)))


def test_one_seed_falls_back_to_welch_and_stays_undecided():
    accs = {**SYNTHETIC, "b/z": {3: 0.95}}
    study, runs = _synthetic(accs)
    row = summarize.aggregate(study, runs).set_index("experiment").loc["b/z"]
    assert row["test"] == "welch" and row["n_pairs"] == 1 and row["delta_acc"] == pytest.approx(0.95 - 0.9425)
    assert math.isnan(row["p_value"]) and math.isnan(row["p_value_holm"]) and row["holm_family"] == 0
    assert pd.isna(row["seeds_needed"]) and row["verdict"] == "undecided"


def test_seeds_needed_is_empty_where_the_delta_is_not_worth_detecting():
    """|Δ| < min_effect gets no seed count (the quick study's init/kaiming: Δ 2e-8, 153,421,487,307 seeds)."""
    swing = {s: 0.02 if s % 2 else -0.02 for s in range(4)}  # paired differences ±2 pp, mean 2e-8
    tiny = {s: acc + swing[s] + (8e-8 if s == 3 else 0.0) for s, acc in SYNTHETIC["baseline"].items()}
    exps = summarize.aggregate(*_synthetic({**SYNTHETIC, "a/y": tiny})).set_index("experiment")
    row = exps.loc["a/y"]
    assert row["delta_acc"] == pytest.approx(2e-8, abs=1e-12) and row["verdict"] == "undecided"
    assert pd.isna(row["seeds_needed"]) and row["mde_acc"] > 0.01  # too few seeds, but nothing to count
    assert exps.loc["b/z", "delta_acc"] == pytest.approx(0.01) and exps.loc["b/z", "seeds_needed"] >= 2  # 1 pp: counted


# ----------------------------------------------------------------------------- real runs


def test_summary_files_from_real_runs(study_runs):
    root, _ = study_runs
    study = io.read_json(root / "study" / "experiments.json")
    runs = pd.read_csv(root / "summary" / "runs.csv")
    exps = pd.read_csv(root / "summary" / "experiments.csv", keep_default_na=False, na_values=[""])
    assert list(runs.columns) == summarize.RUN_COLUMNS  # the MLflow ids are the writer's (mlflow.csv)
    assert list(exps.columns) == summarize.EXPERIMENT_COLUMNS
    assert len(runs) == len(study["experiments"]) * 2 and len(exps) == len(study["experiments"])
    assert list(exps["experiment"]) == [e["id"] for e in study["experiments"]]  # study order

    # every number is recomputed from the run files
    for exp in study["experiments"]:
        accs = [io.read_json(root / "runs" / exp["id"] / f"seed{s}" / "metrics.json")["test_acc"] for s in (0, 1)]
        row = exps.set_index("experiment").loc[exp["id"]]
        assert row["n"] == 2 and row["n_seeds"] == 2
        assert row["test_acc_mean"] == pytest.approx(np.mean(accs))
        assert row["test_acc_min"] == pytest.approx(min(accs)) and row["test_acc_max"] == pytest.approx(max(accs))
        assert 0 <= row["test_acc_mean"] <= 1
        if np.std(accs) > 0:  # 95% t-interval, cut to [0, 1]
            low, high = st.t.interval(0.95, 1, loc=np.mean(accs), scale=st.sem(accs))
            assert (row["test_acc_ci_low"], row["test_acc_ci_high"]) == pytest.approx((max(low, 0), min(high, 1)))
    base = exps.set_index("experiment").loc["baseline"]
    assert math.isnan(base["delta_acc"]) and math.isnan(base["p_value"]) and math.isnan(base["reference"])
    bn = exps.set_index("experiment").loc["batch_norm/bn"]
    assert bn["delta_acc"] == pytest.approx(bn["test_acc_mean"] - base["test_acc_mean"])
    acc = runs.set_index(["experiment", "seed"])["test_acc"]
    ref = st.ttest_rel([acc["batch_norm/bn", s] for s in (0, 1)], [acc["baseline", s] for s in (0, 1)])
    assert bn["test"] == "paired_t" and bn["n_pairs"] == 2  # both sides trained on seeds 0 and 1
    if np.isfinite(ref.pvalue):
        assert bn["p_value"] == pytest.approx(ref.pvalue)
    assert bn["params"] > base["params"]  # BN adds scale and shift parameters

    sweep = exps.set_index("experiment").loc["dropout/p=0.2"]
    assert sweep["sweep_key"] == "model.dropout" and float(sweep["sweep_value"]) == 0.2
    es = exps.set_index("experiment").loc["early_stopping/patience=1"]
    assert es["status"] in ("finished", "early_stopped", "early_stopped (1/2)")
    diverged = exps.set_index("experiment").loc["optimizer/lr=1000"]
    assert diverged["status"].startswith("diverged") and diverged["n_diverged"] >= 1

    # read_summary joins the MLflow writer's record: each run gets its own id, untracked ones none
    joined, _ = summarize.read_summary(root / "summary")
    assert list(joined.columns) == summarize.RUN_COLUMNS + summarize.MLFLOW_COLUMNS and len(joined) == len(runs)
    assert list(joined["experiment"]) == list(runs["experiment"]) and list(joined["seed"]) == list(runs["seed"])
    tracked = joined.set_index(["experiment", "seed"])
    assert tracked.loc[("baseline", 0), "mlflow_run_id"] == "abc123"
    assert tracked.loc[("baseline", 0), "mlflow_url"] == "#/experiments/1/runs/abc123"
    assert tracked["mlflow_run_id"].isna().sum() == len(runs) - 1


def test_csv_holm_and_bh_are_exact_over_the_p_values(study_runs):
    """The acceptance check: p_value_holm is Holm over the group's p_value, q_value BH over the study's."""
    root, _ = study_runs
    exps = pd.read_csv(root / "summary" / "experiments.csv", keep_default_na=False, na_values=[""])
    tested = exps[exps["p_value"].notna()]
    assert len(tested) >= 3
    assert list(tested["q_value"]) == pytest.approx(list(st.false_discovery_control(tested["p_value"])))
    for _group, rows in tested.groupby("group"):
        assert list(rows["p_value_holm"]) == pytest.approx(list(multipletests(rows["p_value"], method="holm")[1]))
        assert set(rows["holm_family"]) == {len(rows)}
    assert exps["p_value_holm"].isna().equals(exps["p_value"].isna())
    assert set(exps["test"].dropna()) == {"paired_t"} and exps["test"].isna().sum() == 1  # only the baseline
    assert set(exps["verdict"].dropna()) <= set(report.VERDICT_NAMES) and exps["verdict"].isna().sum() == 1  # named


def test_empty_cells_not_nan_text(study_runs):
    root, _ = study_runs
    text = (root / "summary" / "experiments.csv").read_text()
    assert "nan" not in text.lower().replace("early", "") and "baseline,baseline,baseline,," in text


def test_missing_runs_and_bad_study(tmp_path, study_runs):
    root, _ = study_runs
    study = io.read_json(root / "study" / "experiments.json")
    study["seeds"] = [0, 1, 7]  # seed 7 never ran
    runs, exps = summarize.summarize(study, root / "runs", tmp_path / "summary")
    assert (runs["status"] == "missing").sum() == len(study["experiments"])
    base = exps.set_index("experiment").loc["baseline"]
    assert base["n"] == 2 and base["status"] == "incomplete (2/3)"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "digits", "seeds": [0], "experiments": [{"id": "x"}]}))
    with pytest.raises(summarize.SummaryError, match=r"bad.json: experiments\[0\] lacks group"):
        summarize.load_study(bad)
    with pytest.raises(summarize.SummaryError, match="not found"):
        summarize.load_study(tmp_path / "nope.json")
    study["experiments"][1]["reference"] = "ghost"
    io.write_json(bad, study)
    with pytest.raises(summarize.SummaryError, match="unknown reference 'ghost'"):
        summarize.load_study(bad)


def test_cli(study_runs, tmp_path):
    from ablationlab.__main__ import main

    root, _ = study_runs
    assert (
        main(
            [
                "summarize",
                "--study",
                str(root / "study" / "experiments.json"),
                "--runs",
                str(root / "runs"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "runs.csv").read_text() == (root / "summary" / "runs.csv").read_text()
    assert (tmp_path / "experiments.csv").read_text() == (root / "summary" / "experiments.csv").read_text()
