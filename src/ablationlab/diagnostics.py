"""Diagnostics of the training curves: overfitting, a noisy end of training, under-fitting, divergence.

Pure functions over a run's ``history.csv`` (columns ``epoch``, ``train_loss``,
``train_acc``, ``val_loss``, ``val_acc``, ...) and over an experiment's seeds. Each
experiment gets the numbers behind the reading, the flags they raise, and plain sentences
that say what they mean for the verdict. :func:`diagnose` builds
``results/summary/diagnostics.csv`` (written by ``summarize``)::

    experiment, val_loss_min_epoch, last_epoch, overfit_gap, train_val_acc_gap, val_acc_swing,
    late_swing, noise_floor, last_vs_best_acc, val_loss_trend, flags, reading

A noisy end of training is told from noise by two yardsticks (:func:`flags`): the validation
accuracy's largest fall between two of the last epochs (``late_swing``, seed mean) and the last
epoch's shortfall from the best one are compared with the effect being
judged (the experiment's |Δ| against its reference, at least ``statistics.min_effect``) and
with the validation set's own sampling noise (``noise_floor``: two binomial standard errors of
its accuracy, so a small validation set's one-image jumps raise nothing). Above both, the
last-epoch number is a lottery ticket for this comparison: the reading names the likely causes
found in the recipe (a partial last batch, a constant learning rate, BatchNorm on tiny
batches) and what to do. Below the effect but above both the noise and ``statistics.min_effect``, a late
swing raises no flag; the reading names it (the verdict stands, the last-epoch accuracy is uncertain by
about as much), never "healthy". A validation-loss rise is overfitting only above the validation loss's
own noise (:func:`loss_noise`): on a small validation set a few images carry the loss. "Still improving"
needs a trend, not one lucky epoch: the seed-mean
validation loss of the last ``TREND_EPOCHS`` epochs falls by at least ``STILL_FALLING`` per epoch,
significantly (least-squares slope, p < 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from ablationlab import layout
from ablationlab.formats import number_text, pct, pp

COLUMNS = [
    "experiment",
    "val_loss_min_epoch",
    "last_epoch",
    "overfit_gap",
    "train_val_acc_gap",
    "val_acc_swing",
    "late_swing",
    "noise_floor",
    "last_vs_best_acc",
    "val_loss_trend",
    "flags",
    "reading",
]
FLAGS = ("overfitting", "unstable", "swing", "underfitting", "diverged")
NUMBERS = (
    "val_loss_min_epoch",
    "last_epoch",
    "overfit_gap",
    "overfit_rise",
    "train_val_acc_gap",
    "val_acc_swing",
    "late_swing",
    "last_vs_best_acc",
    "train_acc_last",
    "val_acc_last",
)

# Thresholds (accuracies as fractions, losses in the loss's own units)
OVERFIT_MIN_EPOCHS_AFTER = 2  # a validation-loss minimum only 1 epoch before the end is noise, not a trend
OVERFIT_LOSS_RISE = 0.10  # val loss ≥ 10 % above its minimum at the end: a rise larger than epoch-to-epoch jitter
OVERFIT_ACC_GAP = 0.05  # train accuracy ≥ 5 pp above val accuracy at the end: the model memorises the train split
LATE_EPOCHS = 5  # "the last epochs": the last 5 epoch-to-epoch moves (epochs 5–10 of 10)
NOISE_SE = 2.0  # the validation set's noise floor: this many binomial standard errors of its accuracy
UNDERFIT_TRAIN_ACC = 0.60  # a CNN that fits < 60 % of its own training images has not learnt the task yet
STILL_FALLING = 0.02  # seed-mean val loss still falling ≥ 2 % per epoch over its last epochs: mid-descent
TREND_EPOCHS = 4  # ... the last 4 epochs: the end of the curve, not the descent before it
TREND_P = 0.05  # ... and that fall is a trend (least-squares slope), not one lucky epoch
SMALL_BN_BATCH = 16  # BatchNorm statistics of ≤ 16 images move with every batch


@dataclass
class Context:
    """What an experiment's curves are read against: the effect judged and where noise may come from."""

    delta: float | None = None  # Δ test accuracy vs the reference (None: not compared)
    min_effect: float = 0.01  # the smallest effect worth detecting (statistics.min_effect)
    n_val: int | None = None  # validation images
    recipe: Mapping[str, Any] | None = None
    partial_batch: int = 0  # images in each epoch's partial last step (0: none)


def _finite(history: pd.DataFrame) -> pd.DataFrame:
    """The epochs whose losses are finite (a diverged run's last row holds the non-finite loss)."""
    frame = history.replace([np.inf, -np.inf], np.nan)
    return frame.dropna(subset=["train_loss", "val_loss"]).sort_values("epoch")


def run_numbers(history: pd.DataFrame) -> dict[str, float]:
    """The numbers of one run's curves (nan without a finite epoch).

    ``val_loss_min_epoch``, ``last_epoch``, ``overfit_gap`` (val loss at the end − its minimum),
    ``overfit_rise`` (the same relative to the minimum), ``train_val_acc_gap`` (train − val accuracy
    at the end), ``val_acc_swing`` (mean |Δ val acc| epoch to epoch beyond the net change: the
    back-and-forth, 0 for a curve that only climbs), ``late_swing`` (:func:`late_swing`: the largest
    fall among the last ``LATE_EPOCHS`` moves), ``last_vs_best_acc`` (best − last val
    accuracy), ``train_acc_last``, ``val_acc_last``.
    """
    h = _finite(history)
    if h.empty:
        return dict.fromkeys(NUMBERS, math.nan)
    loss, acc, last = h["val_loss"].to_numpy(float), h["val_acc"].to_numpy(float), h.iloc[-1]
    low, moves = float(loss.min()), np.abs(np.diff(acc))
    return {
        "val_loss_min_epoch": float(h["epoch"].iloc[int(loss.argmin())]),
        "last_epoch": float(last["epoch"]),
        "overfit_gap": float(loss[-1] - low),
        "overfit_rise": float((loss[-1] - low) / low) if low > 0 else math.nan,
        "train_val_acc_gap": float(last["train_acc"] - last["val_acc"]),
        "val_acc_swing": float((moves.sum() - abs(acc[-1] - acc[0])) / len(moves)) if len(moves) else math.nan,
        "late_swing": late_swing(acc),
        "last_vs_best_acc": float(acc.max() - acc[-1]),
        "train_acc_last": float(last["train_acc"]),
        "val_acc_last": float(last["val_acc"]),
    }


def late_swing(val_acc: np.ndarray) -> float:
    """The largest fall of validation accuracy from one epoch to the next among the last ``LATE_EPOCHS`` moves
    (0 for a curve that only climbs; nan with fewer than two epochs): the back-and-forth of a noisy end."""
    moves = np.diff(np.asarray(val_acc, dtype=float))[-LATE_EPOCHS:]
    return float(max(0.0, -moves.min())) if len(moves) else math.nan


def val_loss_trend(histories: Sequence[pd.DataFrame]) -> tuple[float, float]:
    """(relative change per epoch, p-value) of the seed-mean validation loss over its last ``TREND_EPOCHS``
    epochs: the least-squares slope over the mean level. Two epochs give their change with p = 0 (nothing
    to judge its noise by); nan, nan with fewer."""
    curves = [_finite(h).set_index("epoch")["val_loss"] for h in histories]
    if not curves:
        return math.nan, math.nan
    mean = pd.concat(curves, axis=1).dropna().mean(axis=1).tail(TREND_EPOCHS)
    if len(mean) < 2 or not mean.mean() > 0:
        return math.nan, math.nan
    if len(mean) == 2:
        return float((mean.iloc[1] - mean.iloc[0]) / mean.mean()), 0.0
    fit = _st.linregress(mean.index.to_numpy(float), mean.to_numpy(float))
    return float(fit.slope / mean.mean()), float(fit.pvalue)


def noise_floor(val_acc: float, n_val: int | None) -> float:
    """``NOISE_SE`` binomial standard errors of a validation accuracy ``val_acc`` on ``n_val`` images (0 unknown)."""
    if not n_val or math.isnan(val_acc):
        return 0.0
    return NOISE_SE * math.sqrt(max(val_acc * (1 - val_acc), 0.0) / n_val)


def loss_noise(val_acc: float, n_val: int | None) -> float:
    """The validation loss's noise floor relative to its level (0 unknown): the loss is carried by the
    misclassified and borderline images, so it moves with their count, whose relative noise is the
    :func:`noise_floor` of the error rate over that rate (counting at least one misclassified image).
    A 144-image validation set at 97 % (4 errors) gives 95 %: a rise of 11 % is noise; 5000 images at
    90 % give 8.5 %, below ``OVERFIT_LOSS_RISE``."""
    if not n_val or math.isnan(val_acc):
        return 0.0
    errors = max(1.0 - val_acc, 1.0 / n_val)
    return noise_floor(1.0 - errors, n_val) / errors


def yardstick(context: Context) -> float:
    """The effect a noisy end is measured against: |Δ| of the comparison, at least the smallest worth detecting."""
    return max(
        abs(context.delta) if context.delta is not None and math.isfinite(context.delta) else 0.0, context.min_effect
    )


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def flags(numbers: dict[str, float], context: Context, n_diverged: int = 0) -> list[str]:
    """The flags the experiment's ``numbers`` (:func:`experiment_numbers`) raise, in :data:`FLAGS` order."""
    out = []
    after = numbers["last_epoch"] - numbers["val_loss_min_epoch"]
    if after >= OVERFIT_MIN_EPOCHS_AFTER and (loss_rises(numbers) or gap_exceeds(numbers)):
        out.append("overfitting")
    limit = max(yardstick(context), numbers["noise_floor"])
    if numbers["late_swing"] > limit or numbers["last_vs_best_acc"] > limit:
        out.append("unstable")
    elif swings(numbers, context):
        out.append("swing")
    still = numbers["val_loss_trend"] <= -STILL_FALLING and numbers["val_loss_trend_p"] < TREND_P
    if numbers["train_acc_last"] < UNDERFIT_TRAIN_ACC or still:
        out.append("underfitting")
    if n_diverged:
        out.append("diverged")
    return out


def loss_rises(numbers: dict[str, float]) -> bool:
    """Whether the validation loss ends above its minimum by ``OVERFIT_LOSS_RISE`` and by more than its noise."""
    return numbers["overfit_rise"] >= OVERFIT_LOSS_RISE and numbers["overfit_rise"] > numbers["loss_noise"]


def gap_exceeds(numbers: dict[str, float]) -> bool:
    """Whether train accuracy ends ``OVERFIT_ACC_GAP`` above validation accuracy, and above its noise floor."""
    gap = numbers["train_val_acc_gap"]
    return gap >= OVERFIT_ACC_GAP and gap > numbers["noise_floor"]


def swings(numbers: dict[str, float], context: Context) -> bool:
    """Whether the late swing exceeds the validation set's noise and the smallest effect worth detecting
    (flagged ``unstable`` where it exceeds the effect judged too)."""
    return numbers["late_swing"] > max(numbers["noise_floor"], context.min_effect)


def causes(context: Context) -> list[tuple[str, str]]:
    """(likely cause, what to do) pairs for a noisy end of training, read from the recipe."""
    recipe, found = context.recipe or {}, []
    if context.partial_batch:
        found.append(
            (
                f"every epoch ends on one step over a partial batch of {context.partial_batch} images",
                "set drop_last: true",
            )
        )
    if recipe and recipe["scheduler"]["name"] == "none":
        found.append(
            (
                f"a constant learning rate ({recipe['optimizer']['lr']:g}, no schedule)",
                "let it decay (scheduler: cosine or step)",
            )
        )
    if recipe and recipe["model"]["batch_norm"] and recipe["batch_size"] <= SMALL_BN_BATCH:
        found.append(
            (
                f"BatchNorm statistics from batches of only {recipe['batch_size']} images",
                "use larger batches or no BatchNorm",
            )
        )
    return found


def _judged(context: Context) -> str:
    return (
        f"the Δ of {pp(abs(context.delta), signed=False)} pp being judged"
        if context.delta is not None and abs(context.delta) >= context.min_effect
        else f"the smallest effect worth detecting ({pp(context.min_effect, signed=False)} pp)"
    )


def _noise_reading(numbers: dict[str, float], context: Context) -> str:
    judged = _judged(context)
    found = causes(context)
    why = (
        "Likely causes: " + "; ".join(c for c, _ in found) + ". What to do: " + "; ".join(a for _, a in found) + ", "
        if found
        else "No cause stands out in the recipe. What to do: "
    )
    return (
        f"Noisy end of training: validation accuracy still falls by up to "
        f"{pp(numbers['late_swing'], signed=False)} pp from one epoch to the next over the last epochs and ends "
        f"{pp(numbers['last_vs_best_acc'], signed=False)} pp below its best, more than {judged} and than the "
        f"validation set's own noise ({pp(numbers['noise_floor'], signed=False)} pp): "
        f"the last-epoch accuracy depends on where training stopped. {why}or compare the best epoch's test "
        f"accuracy (test_acc_best) or stop early with restore_best."
    )


def reading(
    numbers: dict[str, float], found: Sequence[str], context: Context, n_diverged: int = 0, n_seeds: int = 0
) -> str:
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
    end = number_text(numbers["last_epoch"])
    if "overfitting" in found:
        rise = "" if loss_rises(numbers) else f", within its noise ({pct(numbers['loss_noise'], 0)} %)"
        parts.append(
            f"Overfitting: the validation loss reaches its minimum around epoch "
            f"{number_text(numbers['val_loss_min_epoch'])} of {end} and then rises by {numbers['overfit_gap']:.3g}"
            f"{rise} (train–val accuracy gap {pp(numbers['train_val_acc_gap'], signed=False)} pp); the last-epoch "
            f"weights compared here are past their best, so early stopping could change this verdict."
        )
    if "unstable" in found:
        parts.append(_noise_reading(numbers, context))
    elif "swing" in found:
        parts.append(
            f"Late swing: validation accuracy falls by up to {pp(numbers['late_swing'], signed=False)} pp between "
            f"two of the last epochs, more than the validation set's own noise "
            f"({pp(numbers['noise_floor'], signed=False)} pp) but less than {_judged(context)}: "
            f"the verdict stands, but the last-epoch accuracy is uncertain by about "
            f"that much (compare test_acc_best, or let the learning rate decay)."
        )
    if "underfitting" in found and numbers["train_acc_last"] < UNDERFIT_TRAIN_ACC:
        parts.append(
            f"Under-fitting: training accuracy ends at only {pct(numbers['train_acc_last'])} %; more "
            f"epochs or capacity could change the verdict."
        )
    elif "underfitting" in found:
        parts.append(
            f"Still improving at the end: the validation loss still falls by "
            f"{pct(-numbers['val_loss_trend'], 0)} % per epoch over the last epochs (training accuracy "
            f"{pct(numbers['train_acc_last'])} %); the verdict holds for this training budget, more epochs "
            f"could change it."
        )
    if not parts:
        noise = (
            f" (the rise of {numbers['overfit_gap']:.3g} after it is within the loss's noise, "
            f"{pct(numbers['loss_noise'], 0)} %)"
            if numbers["overfit_rise"] >= OVERFIT_LOSS_RISE and not loss_rises(numbers)
            else ""
        )
        parts.append(
            f"Curves look healthy: validation loss lowest at epoch {number_text(numbers['val_loss_min_epoch'])} of "
            f"{end}{noise}, validation accuracy falls by at most {pp(numbers['late_swing'], signed=False)} pp between "
            f"two of the last epochs; the last-epoch accuracy is a fair estimate."
        )
    return " ".join(parts)


def experiment_numbers(histories: Sequence[pd.DataFrame], context: Context) -> dict[str, float]:
    """Seed means of :func:`run_numbers`, the validation loss trend and the validation set's noise floor."""
    per_seed = [run_numbers(h) for h in histories]
    numbers = {k: _mean(n[k] for n in per_seed) for k in NUMBERS}
    numbers["val_loss_trend"], numbers["val_loss_trend_p"] = val_loss_trend(histories)
    numbers["noise_floor"] = noise_floor(numbers["val_acc_last"], context.n_val)
    numbers["loss_noise"] = loss_noise(numbers["val_acc_last"], context.n_val)
    return numbers


def experiment_row(
    experiment: str,
    histories: Sequence[pd.DataFrame | None],
    statuses: Sequence[str],
    context: Context | None = None,
) -> dict[str, Any]:
    """One ``diagnostics.csv`` row: the numbers (over the seeds that did not diverge, when there are any),
    flags and reading. ``histories`` (None: the run has none) and ``statuses`` are per seed, in the same order."""
    context = context or Context()
    usable = [(h, s) for h, s in zip(histories, statuses) if h is not None]
    healthy = [h for h, s in usable if str(s) != "diverged"]
    numbers = experiment_numbers(healthy or [h for h, _ in usable], context)
    n_diverged = sum(str(s) == "diverged" for s in statuses)
    found = flags(numbers, context, n_diverged) if healthy or not n_diverged else ["diverged"]  # no healthy curve
    return {
        "experiment": experiment,
        **{k: numbers[k] for k in COLUMNS[1:-2]},
        "flags": ";".join(found),
        "reading": reading(numbers, found, context, n_diverged, len(statuses)),
    }


def diagnose(runs: pd.DataFrame, runs_dir: str | Path, contexts: Mapping[str, Context] | None = None) -> pd.DataFrame:
    """``diagnostics.csv``: one row per experiment of the ``runs.csv`` table, in its order, from each run's
    ``{runs_dir}/{experiment}/seed{n}/history.csv`` (a run without one is left out), read against the
    experiment's :class:`Context` in ``contexts`` (default: none)."""
    rows = []
    for experiment, mine in runs.groupby("experiment", sort=False):
        paths = [layout.run_dir(runs_dir, str(experiment), seed) / "history.csv" for seed in mine["seed"]]
        histories = [pd.read_csv(p) if p.exists() else None for p in paths]
        context = (contexts or {}).get(str(experiment))
        rows.append(experiment_row(str(experiment), histories, list(mine["status"]), context))
    return pd.DataFrame(rows, columns=COLUMNS)
