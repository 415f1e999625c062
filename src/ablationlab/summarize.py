"""Aggregate the runs of a study into ``runs.csv`` and ``experiments.csv``.

``runs.csv`` — one row per (experiment, seed), study order then seed order (the
experiment's own seeds with adaptive seeding):

=================  ==============================================================
experiment         ``baseline`` or ``group/variant``
group              the experiment's group (``baseline`` for the baseline)
seed               the seed
status             ``finished`` / ``early_stopped`` / ``diverged`` (from the run),
                   ``missing`` when the run directory has no ``train.json``
test_acc           test accuracy, fraction 0–1 (metrics.json)
test_loss          test loss
test_top5          top-5 accuracy (empty with ≤ 5 classes)
epochs_run         epochs trained (train.json)
best_epoch         epoch of the best validation score
best_val_acc       best validation accuracy, fraction 0–1
best_val_loss      best validation loss
params             trainable parameters
wall_seconds       training wall time in seconds
device             device the run trained on
stop_reason        train.json ``stop_reason``
params_total       all parameters, trainable or not
torch_version      torch version of the training job
test_acc_best      test accuracy of the best validation epoch's weights (weights_best.pt)
test_loss_best     their test loss
weights            which weights test_acc is of: the ``last`` epoch's, or the ``best`` (early
                   stopping restored them)
partial_batch      images in each epoch's partial last step (0: full batches only)
val_images         validation images
=================  ==============================================================

:func:`read_summary` adds ``mlflow_run_id``, ``mlflow_experiment_id`` and ``mlflow_url``
(the MLflow UI link or its ``#/experiments/...`` fragment) from ``mlflow.csv``, which the
MLflow writer (``ablationlab.track``, after this stage) writes next to these files;
empty when the study is not tracked.

``experiments.csv`` — one row per experiment, in study order; statistics are over
the seeds that have a test result (``n``), diverged seeds included; the comparison
settings (alpha, power, min_effect, looks) come from the study table's ``statistics``:

=====================  ==========================================================
experiment, group      as above
variant                variant name (``baseline`` for the baseline)
reference              the experiment Δ is measured against (the group's base)
sweep_key, sweep_value the swept recipe key and this experiment's value, if any
n                      seeds with a test result
test_acc_mean/_std     mean and sample std (ddof=1) of test accuracy (0–1)
test_acc_ci_low/_high  95 % t-interval of the mean test accuracy, cut to [0, 1]
test_acc_min/_max      extremes over seeds
test_loss_mean/_std/_min/_max   the same for test loss (empty if any loss is not finite)
test_acc_best_mean/_std  the same for the best validation epoch's weights (test_acc_best)
weights                which weights the verdict judges: ``last`` (the last epoch's, unless early
                       stopping restores the best), ``best``, or ``mixed`` across seeds
delta_acc              Δ test accuracy vs the reference, from ``test`` (paired: mean of the
                       per-seed differences over the shared seeds)
delta_ci_low/_high     its confidence interval at 1 − alpha/looks (95 %), cut to [-1, 1]
delta_acc_best         Δ of the best validation epoch's weights (same pairing): when it differs
                       from delta_acc, the verdict depends on where training stopped
p_value                raw two-sided p-value of ``test`` (n ≥ 2 a side, non-zero spread)
test                   ``paired_t`` (≥ 2 shared seeds) or ``welch``; empty without a reference
n_pairs                seeds both sides have a test result for
p_value_wilcoxon       Wilcoxon signed-rank p-value of the pairs (n_pairs ≥ 6)
p_value_holm           Holm-adjusted p_value within the group's family
holm_family            size of that family (the group's comparisons with a p_value)
q_value                Benjamini–Hochberg q-value over all p_values of the study
effect_size(_kind)     ``d_z`` (paired) or ``hedges_g`` (Welch)
prob_improvement(...)  P(variant > reference) over seed pairs, with ``_ci_low``/``_ci_high``
                       (BCa bootstrap, seeded)
mde_acc                minimum detectable |Δ| at level alpha/looks and the set power
seeds_needed           seeds per side at which the observed Δ reaches that power; empty where
                       |Δ| < min_effect (an effect not worth detecting needs no seed count)
verdict                ``significant`` / ``no_effect`` / ``undecided`` (stats.verdict)
epochs_mean            mean epochs run
best_epoch_mean        mean best epoch
params                 trainable parameters
train_seconds_mean     mean training wall time in seconds
status                 ``finished``; ``early_stopped`` when every seed stopped early;
                       ``diverged`` when every seed diverged; ``diverged (k/n)``,
                       ``early_stopped (k/n)``, ``incomplete (k/n)`` for a mix
n_diverged             seeds that diverged
n_early_stopped        seeds that stopped early
n_seeds                seeds the study asked for (with adaptive seeding: this
                       experiment's seeds, results/adaptive/seeds.json)
=====================  ==========================================================

Undefined values (NaN) are written as empty cells.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ablationlab import defaults, io
from ablationlab.layout import run_dir

if TYPE_CHECKING:
    from ablationlab import diagnostics

# stats and diagnostics (scipy, a second of start-up) are imported where the summary is computed: the
# stages that only read it (figures, track, report, show) do not load them

RUN_COLUMNS = [
    "experiment",
    "group",
    "seed",
    "status",
    "test_acc",
    "test_loss",
    "test_top5",
    "epochs_run",
    "best_epoch",
    "best_val_acc",
    "best_val_loss",
    "params",
    "wall_seconds",
    "device",
    "stop_reason",
    "params_total",
    "torch_version",
    "test_acc_best",
    "test_loss_best",
    "weights",
    "partial_batch",
    "val_images",
]
MLFLOW_COLUMNS = ["mlflow_run_id", "mlflow_experiment_id", "mlflow_url"]  # read_summary: from mlflow.csv
# The statistics of each comparison with its reference, after p_value (stats.compare, Holm, BH, verdict).
COMPARISON_COLUMNS = [
    "test",
    "n_pairs",
    "p_value_wilcoxon",
    "p_value_holm",
    "holm_family",
    "q_value",
    "effect_size",
    "effect_size_kind",
    "prob_improvement",
    "prob_improvement_ci_low",
    "prob_improvement_ci_high",
    "mde_acc",
    "seeds_needed",
    "verdict",
]
EXPERIMENT_COLUMNS = [
    "experiment",
    "group",
    "variant",
    "reference",
    "sweep_key",
    "sweep_value",
    "n",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_ci_low",
    "test_acc_ci_high",
    "test_acc_min",
    "test_acc_max",
    "test_loss_mean",
    "test_loss_std",
    "test_loss_min",
    "test_loss_max",
    "test_acc_best_mean",
    "test_acc_best_std",
    "weights",
    "delta_acc",
    "delta_ci_low",
    "delta_ci_high",
    "delta_acc_best",
    "p_value",
    *COMPARISON_COLUMNS,
    "epochs_mean",
    "best_epoch_mean",
    "params",
    "train_seconds_mean",
    "status",
    "n_diverged",
    "n_early_stopped",
    "n_seeds",
]
_INT_RUN_COLUMNS = ["seed", "epochs_run", "best_epoch", "params", "params_total", "partial_batch", "val_images"]
_INT_EXPERIMENT_COLUMNS = [
    "n",
    "params",
    "n_diverged",
    "n_early_stopped",
    "n_seeds",
    "n_pairs",
    "holm_family",
    "seeds_needed",
]
_EXPERIMENT_KEYS = ("id", "group", "variant", "reference", "sweep", "recipe")
# columns read back as text whatever they look like (a variant named 1, a swept value 0.3)
# text even where every cell of a table is empty (pandas would read such a column as float)
_TEXT_COLUMNS = (
    *("experiment", "group", "variant", "reference", "sweep_value", "mlflow_run_id", "mlflow_experiment_id"),
    *("weights", "flags", "reading"),
)


class SummaryError(ValueError):
    """A study or run file is missing keys or inconsistent."""


def load_study(path: str | Path, seed_plan: str | Path | None = None) -> dict[str, Any]:
    """Read ``experiments.json`` and check the keys this stage relies on.

    With ``seed_plan`` (adaptive seeding's ``results/adaptive/seeds.json``) every experiment
    gets its own ``seeds`` and ``seed_reasons``, and the study the plan as ``seed_plan``.
    """
    study = _load_study(path)
    return study if seed_plan is None else with_seed_plan(study, io.read_json(seed_plan), seed_plan)


def with_seed_plan(study: dict[str, Any], plan: dict[str, Any], where: Any = "seed plan") -> dict[str, Any]:
    """The study table with each experiment's seeds and reasons from an adaptive seed plan."""
    missing = [e["id"] for e in study["experiments"] if e["id"] not in plan.get("seeds", {})]
    if missing:
        raise SummaryError(f"{where}: no seeds for experiments {missing} (re-run the adaptive looks)")
    experiments = [
        {**e, "seeds": plan["seeds"][e["id"]], "seed_reasons": plan["reasons"].get(e["id"], [])}
        for e in study["experiments"]
    ]
    return {**study, "experiments": experiments, "seed_plan": plan}


def experiment_seeds(study: dict[str, Any], experiment: dict[str, Any]) -> list[int]:
    """The seeds an experiment was asked to have: its own (adaptive seeding) or the study's."""
    return list(experiment.get("seeds") or study["seeds"])


def _load_study(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    with io.json_errors(path, SummaryError, missing="study file not found"):
        study = io.read_json(path)
    for key in ("dataset", "seeds", "experiments"):
        if key not in study:
            raise SummaryError(f"{path}: missing key {key!r}")
    ids = []
    for i, exp in enumerate(study["experiments"]):
        missing = [k for k in _EXPERIMENT_KEYS if k not in exp]
        if missing:
            raise SummaryError(f"{path}: experiments[{i}] lacks {', '.join(missing)}")
        ids.append(exp["id"])
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SummaryError(f"{path}: duplicate experiment ids {dupes}")
    for exp in study["experiments"]:
        if exp["reference"] is not None and exp["reference"] not in ids:
            raise SummaryError(f"{path}: experiment {exp['id']!r} has unknown reference {exp['reference']!r}")
    return study


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with io.json_errors(path, SummaryError):
        return io.read_json(path)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_run(runs_dir: str | Path, experiment: dict[str, Any], seed: int) -> dict[str, Any]:
    """One ``runs.csv`` row from a run directory (missing files give empty cells)."""
    d = run_dir(runs_dir, experiment["id"], seed)
    train = _read_optional(d / "train.json")
    metrics = _read_optional(d / "metrics.json")
    status = metrics.get("status") or train.get("status") or "missing"
    return {
        "experiment": experiment["id"],
        "group": experiment["group"],
        "seed": int(seed),
        "status": status,
        "test_acc": _num(metrics.get("test_acc")),
        "test_loss": _num(metrics.get("test_loss")),
        "test_top5": _num(metrics.get("test_top5")),
        "test_acc_best": _num(metrics.get("test_acc_best")),
        "test_loss_best": _num(metrics.get("test_loss_best")),
        "weights": train.get("weights"),
        "epochs_run": train.get("epochs_run"),
        "best_epoch": train.get("best_epoch"),
        "best_val_acc": _num(train.get("best_val_acc")),
        "best_val_loss": _num(train.get("best_val_loss")),
        "params": train.get("params"),
        "wall_seconds": _num(train.get("wall_seconds")),
        "device": train.get("device"),
        "stop_reason": train.get("stop_reason"),
        "params_total": train.get("params_total"),
        "torch_version": train.get("torch_version"),
        "partial_batch": train.get("partial_batch"),
        "val_images": train.get("val_images"),
    }


def collect_runs(study: dict[str, Any], runs_dir: str | Path) -> pd.DataFrame:
    """The ``runs.csv`` table: every experiment × seed of the study."""
    rows = [read_run(runs_dir, exp, seed) for exp in study["experiments"] for seed in experiment_seeds(study, exp)]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in _INT_RUN_COLUMNS:
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    return frame


def _status(statuses: list[str]) -> str:
    n = len(statuses)
    count = {s: statuses.count(s) for s in set(statuses)}
    diverged, early, missing = count.get("diverged", 0), count.get("early_stopped", 0), count.get("missing", 0)
    if diverged:
        return "diverged" if diverged == n else f"diverged ({diverged}/{n})"
    if missing:
        return f"incomplete ({n - missing}/{n})"
    if early:
        return "early_stopped" if early == n else f"early_stopped ({early}/{n})"
    return "finished"


def _sweep_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return value
    return io.canonical_json(value)


def _clip(x: float, low: float, high: float) -> float:
    """An interval bound cut to the possible range (a t-interval of few seeds can leave it); nan stays nan."""
    return x if math.isnan(x) else min(max(x, low), high)


def _first(series: pd.Series) -> Any:
    values = series.dropna()
    return values.iloc[0] if len(values) else None


def _comparison(variant: dict[int, float], reference: dict[int, float], settings: dict[str, Any]) -> dict[str, Any]:
    """One row's comparison columns (Holm, BH and verdict are filled in later, over families)."""
    from ablationlab import stats

    res = stats.compare(variant, reference, alpha=settings["alpha"], power=settings["power"], looks=settings["looks"])
    size, worth = abs(res["delta"]), settings["min_effect"]
    if not (size >= worth or math.isclose(size, worth)):  # no seed count for it (a Δ of 2e-8 "needed" 1.5e11)
        res["seeds_needed"] = math.nan
    return {
        "delta_acc": res["delta"],
        "delta_ci_low": _clip(res["ci_low"], -1.0, 1.0),
        "delta_ci_high": _clip(res["ci_high"], -1.0, 1.0),
        "p_value": res["p_value"],
        **{k: res[k] for k in COMPARISON_COLUMNS if k in res},
    }


def add_comparisons(rows: list[dict], study: dict[str, Any], per_seed_acc: dict[str, dict[int, float]]) -> None:
    """Fill the comparison columns of ``rows`` in place: each experiment vs its reference; Holm within
    each group (the group's experiments that have a reference); BH over the whole study; the verdict."""
    from ablationlab import stats

    settings = defaults.statistics(study.get("statistics"))
    compared = [row for row, exp in zip(rows, study["experiments"]) if exp["reference"]]
    for row, exp in zip(rows, study["experiments"]):
        ref = exp["reference"]
        row.update(
            _comparison(per_seed_acc[exp["id"]], per_seed_acc[ref], settings)
            if ref
            else {"test": "", "effect_size_kind": "", "verdict": ""}
        )
    for group in dict.fromkeys(row["group"] for row in compared):
        family = [row for row in compared if row["group"] == group]
        size = sum(not math.isnan(row["p_value"]) for row in family)
        for row, p in zip(family, stats.holm([row["p_value"] for row in family])):
            row.update(p_value_holm=p, holm_family=size)
    for row, q in zip(compared, stats.bh([row["p_value"] for row in compared])):
        row["q_value"] = q
        row["verdict"] = stats.verdict(
            row["p_value_holm"],
            row["mde_acc"],
            alpha=settings["alpha"],
            looks=settings["looks"],
            min_effect=settings["min_effect"],
        )


def _weights(values: pd.Series) -> str:
    """``last``, ``best`` or ``mixed``: which weights the seeds' test_acc is of (empty when unknown)."""
    kinds = set(values.dropna())
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")


def aggregate(study: dict[str, Any], runs: pd.DataFrame) -> pd.DataFrame:
    """The ``experiments.csv`` table from the ``runs.csv`` table."""
    from ablationlab import stats

    rows, per_seed_acc, per_seed_best = [], {}, {}
    for exp in study["experiments"]:
        mine = runs[runs["experiment"] == exp["id"]]
        tested = mine[mine["test_acc"].notna()]
        acc, loss = stats.describe(tested["test_acc"]), stats.describe(tested["test_loss"])
        best = stats.describe(tested["test_acc_best"].dropna())
        per_seed_acc[exp["id"]] = dict(zip(tested["seed"].astype(int), tested["test_acc"]))
        per_seed_best[exp["id"]] = dict(zip(tested["seed"].astype(int), tested["test_acc_best"]))
        sweep = exp.get("sweep") or {}
        statuses = mine["status"].tolist()
        rows.append(
            {
                "experiment": exp["id"],
                "group": exp["group"],
                "variant": exp["variant"],
                "reference": exp["reference"],
                "sweep_key": sweep.get("key"),
                "sweep_value": _sweep_value(sweep.get("value")),
                "n": acc["n"],
                **{f"test_acc_{k}": acc[k] for k in ("mean", "std", "min", "max")},
                "test_acc_ci_low": _clip(acc["ci_low"], 0.0, 1.0),
                "test_acc_ci_high": _clip(acc["ci_high"], 0.0, 1.0),
                **{f"test_loss_{k}": loss[k] for k in ("mean", "std", "min", "max")},
                "test_acc_best_mean": best["mean"],
                "test_acc_best_std": best["std"],
                "weights": _weights(mine["weights"]),
                "epochs_mean": stats.mean(mine["epochs_run"].dropna()),
                "best_epoch_mean": stats.mean(mine["best_epoch"].dropna()),
                "params": _first(mine["params"]),
                "train_seconds_mean": stats.mean(mine["wall_seconds"].dropna()),
                "status": _status(statuses),
                "n_diverged": statuses.count("diverged"),
                "n_early_stopped": statuses.count("early_stopped"),
                "n_seeds": len(statuses),
            }
        )
    add_comparisons(rows, study, per_seed_acc)
    for row, exp in zip(rows, study["experiments"]):
        ref = exp["reference"]
        row["delta_acc_best"] = stats.paired_delta(per_seed_best[exp["id"]], per_seed_best[ref]) if ref else math.nan
    frame = pd.DataFrame(rows, columns=EXPERIMENT_COLUMNS)
    for col in _INT_EXPERIMENT_COLUMNS:
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    return frame


def contexts(study: dict[str, Any], runs: pd.DataFrame, experiments: pd.DataFrame) -> dict[str, diagnostics.Context]:
    """What each experiment's curves are read against (:class:`ablationlab.diagnostics.Context`): its Δ, the
    smallest effect worth detecting, the validation images, its recipe and partial last batch."""
    from ablationlab import diagnostics

    min_effect = defaults.statistics(study.get("statistics"))["min_effect"]
    delta = dict(zip(experiments["experiment"], experiments["delta_acc"]))
    out = {}
    for exp in study["experiments"]:
        mine = runs[runs["experiment"] == exp["id"]]
        out[exp["id"]] = diagnostics.Context(
            delta=delta.get(exp["id"]) if exp["reference"] else None,
            min_effect=min_effect,
            n_val=_first(mine["val_images"]),
            recipe=exp["recipe"],
            partial_batch=int(mine["partial_batch"].max()) if mine["partial_batch"].notna().any() else 0,
        )
    return out


def summarize(
    study: str | Path | dict[str, Any], runs_dir: str | Path, out_dir: str | Path, seed_plan: str | Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``out_dir/runs.csv``, ``out_dir/experiments.csv`` and ``out_dir/diagnostics.csv`` (the curves'
    reading, :mod:`ablationlab.diagnostics`); return the first two tables."""
    from ablationlab import diagnostics

    if not isinstance(study, dict):
        study = load_study(study, seed_plan)
    runs = collect_runs(study, runs_dir)
    experiments = aggregate(study, runs)
    out_dir = Path(out_dir)
    io.write_csv(out_dir / "runs.csv", runs)
    io.write_csv(out_dir / "experiments.csv", experiments)
    io.write_csv(out_dir / "diagnostics.csv", diagnostics.diagnose(runs, runs_dir, contexts(study, runs, experiments)))
    return runs, experiments


def read_table(path: str | Path) -> pd.DataFrame:
    """A table of the summary read back: empty cells NaN/None, the names and ids as text."""
    path = Path(path)
    if not path.exists():
        raise SummaryError(f"{path}: summary file not found (run `python -m ablationlab summarize` first)")
    return pd.read_csv(path, dtype=dict.fromkeys(_TEXT_COLUMNS, str), keep_default_na=False, na_values=[""])


def read_summary(summary_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``runs.csv`` (with the runs' ``MLFLOW_COLUMNS`` from ``mlflow.csv`` when present)
    and ``experiments.csv`` back (:func:`read_table`)."""
    summary_dir = Path(summary_dir)
    runs, experiments = read_table(summary_dir / "runs.csv"), read_table(summary_dir / "experiments.csv")
    return _with_mlflow(runs, summary_dir / "mlflow.csv"), experiments


def _with_mlflow(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``runs`` with the child runs' ``MLFLOW_COLUMNS`` of the MLflow writer's record (empty if absent)."""
    if not path.exists():
        return runs.assign(**{c: math.nan for c in MLFLOW_COLUMNS})
    tracked = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    missing = [c for c in ["experiment", "seed", "kind", *MLFLOW_COLUMNS] if c not in tracked.columns]
    if missing:
        raise SummaryError(f"{path}: missing column(s) {', '.join(missing)}")
    tracked = tracked[tracked["kind"] == "child"].astype({"seed": int})
    return runs.merge(tracked[["experiment", "seed", *MLFLOW_COLUMNS]], on=["experiment", "seed"], how="left")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablationlab summarize", description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="results/study/experiments.json")
    parser.add_argument("--runs", required=True, help="results/runs")
    parser.add_argument("--out", required=True, help="output folder (results/summary)")
    parser.add_argument("--seeds", help="adaptive seeding's results/adaptive/seeds.json: each experiment's seeds")
    args = parser.parse_args(argv)
    _, experiments = summarize(args.study, args.runs, args.out, args.seeds)
    print(f"summarized {len(experiments)} experiments into {args.out}")
    return 0
