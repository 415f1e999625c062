"""Diagnostics of the training curves: overfitting, instability, under-fitting, divergence.

Pure functions over a run's ``history.csv`` (columns ``epoch``, ``train_loss``,
``train_acc``, ``val_loss``, ``val_acc``, ...) and over an experiment's seeds. Each
experiment gets the numbers behind the reading (means over its seeds), the flags they
raise, and one or two plain sentences that say what they mean for the verdict.
:func:`diagnose` builds ``results/summary/diagnostics.csv`` (written by ``summarize``)::

    experiment, val_loss_min_epoch, last_epoch, overfit_gap, train_val_acc_gap,
    val_acc_swing, last_vs_best_acc, flags, reading
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = [
    "experiment",
    "val_loss_min_epoch",
    "last_epoch",
    "overfit_gap",
    "train_val_acc_gap",
    "val_acc_swing",
    "last_vs_best_acc",
    "flags",
    "reading",
]
FLAGS = ("overfitting", "unstable", "underfitting", "diverged")
NUMBERS = (
    "val_loss_min_epoch",
    "last_epoch",
    "overfit_gap",
    "overfit_rise",
    "train_val_acc_gap",
    "val_acc_swing",
    "last_vs_best_acc",
    "train_acc_last",
    "val_loss_last_drop",
)

# Thresholds (accuracies as fractions, losses in the loss's own units)
OVERFIT_MIN_EPOCHS_AFTER = 2  # a validation-loss minimum only 1 epoch before the end is noise, not a trend
OVERFIT_LOSS_RISE = 0.10  # val loss ≥ 10 % above its minimum at the end: a rise larger than epoch-to-epoch jitter
OVERFIT_ACC_GAP = 0.05  # train accuracy ≥ 5 pp above val accuracy at the end: the model memorises the train split
UNSTABLE_SWING = 0.03  # val acc moving back and forth ≥ 3 pp per epoch: larger than the effects most ablations seek
UNSTABLE_LAST_VS_BEST = 0.03  # last epoch ≥ 3 pp below the best: the last-epoch score depends on where training stopped
UNDERFIT_TRAIN_ACC = 0.60  # a CNN that fits < 60 % of its own training images has not learnt the task yet
UNDERFIT_STILL_FALLING = 0.05  # val loss still fell ≥ 5 % in the last epoch: training stopped mid-descent


def _finite(history: pd.DataFrame) -> pd.DataFrame:
    """The epochs whose losses are finite (a diverged run's last row holds the non-finite loss)."""
    frame = history.replace([np.inf, -np.inf], np.nan)
    return frame.dropna(subset=["train_loss", "val_loss"]).sort_values("epoch")


def run_numbers(history: pd.DataFrame) -> dict[str, float]:
    """The numbers of one run's curves (nan without a finite epoch).

    ``val_loss_min_epoch``, ``last_epoch``, ``overfit_gap`` (val loss at the end − its minimum),
    ``overfit_rise`` (the same relative to the minimum), ``train_val_acc_gap`` (train − val accuracy
    at the end), ``val_acc_swing`` (mean |Δ val acc| epoch to epoch beyond the net change: the
    back-and-forth, 0 for a curve that only climbs), ``last_vs_best_acc`` (best −
    last val accuracy), ``train_acc_last``, ``val_loss_last_drop`` (relative fall of the val loss in
    the last epoch).
    """
    h = _finite(history)
    if h.empty:
        return dict.fromkeys(NUMBERS, math.nan)
    loss, acc, last = h["val_loss"].to_numpy(float), h["val_acc"].to_numpy(float), h.iloc[-1]
    low = float(loss.min())
    return {
        "val_loss_min_epoch": float(h["epoch"].iloc[int(loss.argmin())]),
        "last_epoch": float(last["epoch"]),
        "overfit_gap": float(loss[-1] - low),
        "overfit_rise": float((loss[-1] - low) / low) if low > 0 else math.nan,
        "train_val_acc_gap": float(last["train_acc"] - last["val_acc"]),
        "val_acc_swing": float((np.abs(np.diff(acc)).sum() - abs(acc[-1] - acc[0])) / (len(acc) - 1))
        if len(acc) > 1
        else math.nan,
        "last_vs_best_acc": float(acc.max() - acc[-1]),
        "train_acc_last": float(last["train_acc"]),
        "val_loss_last_drop": float((loss[-2] - loss[-1]) / loss[-2]) if len(loss) > 1 and loss[-2] > 0 else math.nan,
    }


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def flags(numbers: dict[str, float], n_diverged: int = 0) -> list[str]:
    """The flags the (seed-mean) ``numbers`` raise, in :data:`FLAGS` order."""
    out = []
    after = numbers["last_epoch"] - numbers["val_loss_min_epoch"]
    if after >= OVERFIT_MIN_EPOCHS_AFTER and (
        numbers["overfit_rise"] >= OVERFIT_LOSS_RISE or numbers["train_val_acc_gap"] >= OVERFIT_ACC_GAP
    ):
        out.append("overfitting")
    if numbers["val_acc_swing"] >= UNSTABLE_SWING or numbers["last_vs_best_acc"] >= UNSTABLE_LAST_VS_BEST:
        out.append("unstable")
    if numbers["train_acc_last"] < UNDERFIT_TRAIN_ACC or numbers["val_loss_last_drop"] >= UNDERFIT_STILL_FALLING:
        out.append("underfitting")
    if n_diverged:
        out.append("diverged")
    return out


def _pp(x: float) -> str:
    return f"{x * 100:.1f} pp"


def _epoch(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.1f}"


def reading(numbers: dict[str, float], found: Sequence[str], n_diverged: int = 0, n_seeds: int = 0) -> str:
    """Plain sentences with the numbers behind each flag and what it means for the verdict."""
    parts = []
    if "diverged" in found:
        parts.append(
            f"Diverged in {n_diverged} of {n_seeds} seeds (non-finite loss): their test accuracy is that of "
            f"the last finite weights, so "
            + (
                "Δ measures the failure, not the change."
                if n_diverged == n_seeds
                else "Δ mixes failed and working runs; the numbers here are those of the other seeds."
            )
        )
    if math.isnan(numbers["last_epoch"]):
        return " ".join(parts) or "No finite training curve to diagnose."
    end = _epoch(numbers["last_epoch"])
    if "overfitting" in found:
        parts.append(
            f"Overfitting: the validation loss reaches its minimum around epoch "
            f"{_epoch(numbers['val_loss_min_epoch'])} of {end} and then rises by {numbers['overfit_gap']:.3g}"
            f" (train–val accuracy gap {_pp(numbers['train_val_acc_gap'])}); the last-epoch weights compared "
            f"here are past their best, so early stopping could change this verdict."
        )
    if "unstable" in found:
        parts.append(
            f"Unstable: validation accuracy swings back and forth by {_pp(numbers['val_acc_swing'])} per "
            f"epoch on average and ends {_pp(numbers['last_vs_best_acc'])} below its best; last-epoch accuracy is a "
            f"noisy estimate here: compare best-epoch accuracy or use early stopping."
        )
    if "underfitting" in found and numbers["train_acc_last"] < UNDERFIT_TRAIN_ACC:
        parts.append(
            f"Under-fitting: training accuracy ends at only {numbers['train_acc_last'] * 100:.1f} %; more "
            f"epochs or capacity could change the verdict."
        )
    elif "underfitting" in found:
        parts.append(
            f"Still improving at the end: the validation loss fell by {numbers['val_loss_last_drop'] * 100:.0f}"
            f" % in the last epoch (training accuracy {numbers['train_acc_last'] * 100:.1f} %); the verdict "
            f"holds for this training budget, more epochs could change it."
        )
    if not parts:
        parts.append(
            f"Curves look healthy: validation loss lowest at epoch {_epoch(numbers['val_loss_min_epoch'])} of "
            f"{end}, validation accuracy swings back and forth by {_pp(numbers['val_acc_swing'])} per epoch; the "
            f"last-epoch accuracy is a fair estimate."
        )
    return " ".join(parts)


def experiment_row(
    experiment: str, histories: Sequence[pd.DataFrame | None], statuses: Sequence[str]
) -> dict[str, Any]:
    """One ``diagnostics.csv`` row: seed means of :func:`run_numbers` (over the seeds that did not diverge, when
    there are any), flags and reading. ``histories`` (None: the run has none) and ``statuses`` are per seed, in
    the same order."""
    usable = [(h, s) for h, s in zip(histories, statuses) if h is not None]
    healthy = [h for h, s in usable if str(s) != "diverged"]
    per_seed = [run_numbers(h) for h in (healthy or [h for h, _ in usable])]
    numbers = {k: _mean(n[k] for n in per_seed) for k in NUMBERS}
    n_diverged = sum(str(s) == "diverged" for s in statuses)
    found = flags(numbers, n_diverged) if healthy or not n_diverged else ["diverged"]  # no healthy curve to read
    return {
        "experiment": experiment,
        **{k: numbers[k] for k in COLUMNS[1:7]},
        "flags": ";".join(found),
        "reading": reading(numbers, found, n_diverged, len(statuses)),
    }


def diagnose(runs: pd.DataFrame, runs_dir: str | Path) -> pd.DataFrame:
    """``diagnostics.csv``: one row per experiment of the ``runs.csv`` table, in its order, from each run's
    ``{runs_dir}/{experiment}/seed{n}/history.csv`` (a run without one is left out of the means)."""
    rows = []
    for experiment, mine in runs.groupby("experiment", sort=False):
        paths = [Path(runs_dir) / str(experiment) / f"seed{seed}" / "history.csv" for seed in mine["seed"]]
        histories = [pd.read_csv(p) if p.exists() else None for p in paths]
        rows.append(experiment_row(str(experiment), histories, list(mine["status"])))
    return pd.DataFrame(rows, columns=COLUMNS)
