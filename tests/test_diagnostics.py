"""diagnostics: every flag raised on a synthetic history built to show it, and absent on a healthy one."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ablationlab import diagnostics as dg
from ablationlab import io
from ablationlab.recipe import complete


def history(val_loss, val_acc, train_acc=None, train_loss=None) -> pd.DataFrame:
    n = len(val_loss)
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "train_loss": train_loss or [1.0 / (e + 1) for e in range(n)],
            "train_acc": train_acc or [min(a + 0.02, 1.0) for a in val_acc],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": [0.1] * n,
            "seconds": [1.0] * n,
            "images_per_s": [100.0] * n,
        }
    )


# converged: loss falls then flattens (≤ 3 % per epoch at the end, not a significant trend), accuracy ~90 %
HEALTHY = history([1.0, 0.6, 0.45, 0.40, 0.39, 0.386], [0.70, 0.82, 0.87, 0.89, 0.895, 0.90])
# overfitting: val-loss minimum at epoch 3 of 8, then it rises by 0.3; train accuracy 100 %
OVERFIT = history(
    [1.0, 0.6, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8],
    [0.7, 0.8, 0.84, 0.84, 0.84, 0.84, 0.84, 0.84],
    train_acc=[0.75, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0, 1.0],
)
# unstable: val accuracy jumps ±10 pp between epochs, last epoch 12 pp below the best
UNSTABLE = history(
    [1.0, 0.8, 0.7, 0.69, 0.68, 0.675],
    [0.60, 0.72, 0.62, 0.74, 0.64, 0.62],
    train_acc=[0.62, 0.66, 0.68, 0.69, 0.70, 0.70],
)
# under-fitting: train accuracy 40 %, loss still falling fast
UNDERFIT = history([2.2, 2.0, 1.8, 1.6], [0.20, 0.26, 0.32, 0.38], train_acc=[0.22, 0.28, 0.34, 0.40])


@pytest.mark.parametrize(
    "frame, expected",
    [(HEALTHY, []), (OVERFIT, ["overfitting"]), (UNSTABLE, ["unstable"]), (UNDERFIT, ["underfitting"])],
)
def test_each_flag_present_only_where_the_curve_shows_it(frame, expected):
    row = dg.experiment_row("x", [frame, frame], ["finished", "finished"])
    assert row["flags"] == ";".join(expected)
    assert row["reading"]


def test_a_noisy_end_is_judged_against_the_effect_and_the_validation_noise():
    # the last epochs fall by 10 pp: more than a Δ of 5 pp and than 2 standard errors of 1000 images (1.9 pp)
    judged = dg.Context(delta=-0.05, min_effect=0.01, n_val=1000)
    assert dg.experiment_row("x", [UNSTABLE], ["finished"], judged)["flags"] == "unstable"
    # ... but not more than a Δ of 15 pp: the verdict stands, the swing is named (not a noisy end)
    assert dg.experiment_row("x", [UNSTABLE], ["finished"], dg.Context(delta=0.15, n_val=1000))["flags"] == "swing"
    # ... nor than the noise of 20 validation images (2 SE of 62 % = 21.7 pp): a few images' jumps
    assert dg.experiment_row("x", [UNSTABLE], ["finished"], dg.Context(delta=-0.05, n_val=20))["flags"] == ""


def test_the_reading_names_the_likely_causes_from_the_recipe():
    recipe = complete({"model": {"batch_norm": True}, "batch_size": 16, "drop_last": False})
    context = dg.Context(delta=-0.02, n_val=1000, recipe=recipe, partial_batch=8)
    reading = dg.experiment_row("x", [UNSTABLE], ["finished"], context)["reading"]
    assert "more than the Δ of 2.0 pp being judged" in reading
    assert "a partial batch of 8 images" in reading and "set drop_last: true" in reading
    assert "a constant learning rate (0.05, no schedule)" in reading and "scheduler: cosine" in reading
    assert "BatchNorm statistics from batches of only 16 images" in reading
    assert "test_acc_best" in reading
    calm = complete({"scheduler": {"name": "cosine"}})
    reading = dg.experiment_row("x", [UNSTABLE], ["finished"], dg.Context(recipe=calm))["reading"]
    assert "No cause stands out in the recipe" in reading and "smallest effect worth detecting (1.0 pp)" in reading


def test_still_improving_needs_a_trend_not_one_epoch():
    falling = history([1.0, 0.8, 0.6, 0.4], [0.6, 0.7, 0.8, 0.85], train_acc=[0.7, 0.8, 0.9, 0.95])
    row = dg.experiment_row("x", [falling], ["finished"])
    assert row["flags"] == "underfitting" and "still falls by 29 % per epoch" in row["reading"]  # 0.2 of the mean 0.7
    # one lucky last epoch (-15 %) after a plateau that rose: no trend over the last epochs
    lucky = history([1.0, 0.6, 0.45, 0.47, 0.46, 0.39], [0.7, 0.82, 0.87, 0.87, 0.87, 0.9])
    assert dg.experiment_row("x", [lucky], ["finished"])["flags"] == ""
    # two epochs: their fall stands for the trend (nothing to judge its noise by)
    short = history([0.8, 0.5], [0.7, 0.8], train_acc=[0.75, 0.9])
    assert dg.experiment_row("x", [short], ["finished"])["flags"] == "underfitting"


def test_numbers_behind_the_reading():
    n = dg.run_numbers(OVERFIT)
    assert n["val_loss_min_epoch"] == 3 and n["last_epoch"] == 8
    assert n["overfit_gap"] == pytest.approx(0.3) and n["overfit_rise"] == pytest.approx(0.6)
    assert n["train_val_acc_gap"] == pytest.approx(0.16) and n["last_vs_best_acc"] == pytest.approx(0.0)
    u = dg.run_numbers(UNSTABLE)
    assert u["val_acc_swing"] == pytest.approx((0.12 + 0.10 + 0.12 + 0.10 + 0.02 - 0.02) / 5)  # beyond the net change
    assert u["late_swing"] == pytest.approx(0.10)  # the largest fall between two epochs
    assert dg.run_numbers(UNDERFIT)["val_acc_swing"] == pytest.approx(0.0)  # a steady climb does not swing
    assert dg.run_numbers(UNDERFIT)["late_swing"] == 0.0
    assert u["last_vs_best_acc"] == pytest.approx(0.12)
    row = dg.experiment_row("x", [OVERFIT], ["finished"])
    assert "minimum around epoch 3 of 8" in row["reading"] and "rises by 0.3" in row["reading"]
    assert "16.0 pp" in row["reading"] and "early stopping" in row["reading"]
    row = dg.experiment_row("x", [UNSTABLE], ["finished"])
    assert "falls by up to 10.0 pp from one epoch to the next" in row["reading"]
    assert "12.0 pp below its best" in row["reading"] and "depends on where training stopped" in row["reading"]
    assert "only 40.0 %" in dg.experiment_row("x", [UNDERFIT], ["finished"])["reading"]


def test_flags_come_from_the_seed_means():
    row = dg.experiment_row("x", [HEALTHY, OVERFIT], ["finished", "finished"])
    assert row["val_loss_min_epoch"] == pytest.approx((6 + 3) / 2) and row["last_epoch"] == pytest.approx(7)
    calm = HEALTHY.assign(val_acc=[0.70, 0.82, 0.87, 0.85, 0.89, 0.90])  # one 2 pp dip
    judged = dg.Context(delta=0.05)  # a Δ of 5 pp is judged
    # one 2 pp dip: above the smallest effect worth detecting, below the Δ: a swing, not a noisy end
    assert dg.experiment_row("x", [calm, calm], ["finished"] * 2, judged)["flags"] == "swing"
    # a fall of 10 pp in one seed of two is still 6 pp on average: more than the Δ
    assert dg.experiment_row("x", [calm, UNSTABLE], ["finished"] * 2, judged)["flags"] == "unstable"


def test_divergence_uses_the_finite_epochs():
    diverged = HEALTHY.copy()
    diverged.loc[len(diverged)] = [7, math.inf, 0.1, math.nan, 0.1, 0.1, 1.0, 100.0]
    n = dg.run_numbers(diverged)
    assert n["last_epoch"] == 6 and math.isfinite(n["overfit_gap"])
    row = dg.experiment_row("x", [diverged, OVERFIT], ["diverged", "finished"])
    assert row["flags"] == "overfitting;diverged" and row["last_epoch"] == 8  # numbers of the healthy seed
    assert row["reading"].startswith("Diverged in 1 of 2 seeds") and "those of the other seeds" in row["reading"]
    row = dg.experiment_row("x", [diverged, OVERFIT], ["diverged", "diverged"])
    assert row["flags"] == "diverged" and row["reading"].endswith("Δ measures the failure, not the change.")
    empty = dg.experiment_row("x", [], ["missing"])
    assert empty["flags"] == "" and math.isnan(empty["last_epoch"]) and "No finite training curve" in empty["reading"]


def test_diagnose_reads_the_run_dirs_in_runs_order(tmp_path):
    for exp, frame in (("baseline", HEALTHY), ("g/over", OVERFIT)):
        for seed in (0, 1):
            io.write_csv(tmp_path / exp / f"seed{seed}" / "history.csv", frame)
    runs = pd.DataFrame(
        {
            "experiment": ["baseline", "baseline", "g/over", "g/over", "g/none"],
            "seed": [0, 1, 0, 1, 0],
            "status": ["finished"] * 4 + ["missing"],
        }
    )
    table = dg.diagnose(runs, tmp_path)
    assert list(table.columns) == dg.COLUMNS
    assert list(table["experiment"]) == ["baseline", "g/over", "g/none"]
    assert list(table["flags"]) == ["", "overfitting", ""]


# the quick study's 144 validation images (10 % of digits' 1437 training images)
QUICK_VAL = 144
# batch 256 (5 steps an epoch): ~78 % at the end, a 12.7-pp fall between epochs 8 and 9, Δ of -22 pp
BIG_BATCH = history(
    [2.0, 1.6, 1.3, 1.1, 0.95, 0.85, 0.78, 0.70, 0.90, 0.72],
    [0.30, 0.45, 0.55, 0.62, 0.68, 0.72, 0.76, 0.80, 0.673, 0.78],
    train_acc=[0.30, 0.45, 0.55, 0.62, 0.68, 0.72, 0.76, 0.79, 0.70, 0.79],
)
# kaiming init: validation loss lowest at epoch 16 of 20 (0.080), then up by 0.009 (11 %) at 97 % accuracy
KAIMING = history(
    [1.0 - 0.065 * e for e in range(15)] + [0.080, 0.083, 0.085, 0.087, 0.089],
    [min(0.5 + 0.05 * e, 0.97) for e in range(20)],
    train_acc=[min(0.5 + 0.05 * e, 0.99) for e in range(20)],
)


def test_a_late_swing_above_the_noise_is_named_not_called_healthy():
    judged = dg.Context(delta=-0.22, min_effect=0.01, n_val=QUICK_VAL)
    row = dg.experiment_row("batch_size/batch=256", [BIG_BATCH], ["finished"], judged)
    assert row["late_swing"] == pytest.approx(0.127) and row["noise_floor"] == pytest.approx(0.069, abs=0.001)
    assert row["flags"] == "swing"  # below the Δ judged: the verdict stands, the reading says how uncertain it is
    reading = row["reading"]
    assert "healthy" not in reading and "fair estimate" not in reading
    assert reading.startswith("Late swing: validation accuracy falls by up to 12.7 pp")
    assert "validation set's own noise (6.9 pp)" in reading and "the Δ of 22.0 pp being judged" in reading
    assert "the verdict stands" in reading and "uncertain by about that much" in reading
    # above the Δ too, it is the noisy end of training (unstable), as before
    row = dg.experiment_row("x", [BIG_BATCH], ["finished"], dg.Context(delta=-0.05, n_val=QUICK_VAL))
    assert row["flags"] == "unstable" and row["reading"].startswith("Noisy end of training")
    # within the noise of 20 validation images (2 SE of 78 % = 18.5 pp): healthy
    row = dg.experiment_row("x", [BIG_BATCH], ["finished"], dg.Context(delta=-0.22, n_val=20))
    assert row["flags"] == "" and row["reading"].startswith("Curves look healthy")


def test_a_loss_rise_within_the_noise_is_not_overfitting():
    n = dg.run_numbers(KAIMING)
    assert n["val_loss_min_epoch"] == 16 and n["overfit_gap"] == pytest.approx(0.009)
    assert n["overfit_rise"] > dg.OVERFIT_LOSS_RISE  # 11 %: above the fixed threshold alone
    row = dg.experiment_row("init/kaiming", [KAIMING], ["finished"], dg.Context(delta=0.0, n_val=QUICK_VAL))
    assert row["flags"] == ""
    assert row["reading"].startswith("Curves look healthy: validation loss lowest at epoch 16 of 20")
    assert "the rise of 0.009 after it is within the loss's noise, 95 %" in row["reading"]
    # the same rise on 20 000 validation images (600 misclassified: noise 8 %) is a trend
    big = dg.experiment_row("x", [KAIMING], ["finished"], dg.Context(n_val=20_000))
    assert big["flags"] == "overfitting" and "rises by 0.009 (train–val" in big["reading"]


def test_loss_noise_follows_the_misclassified_images():
    assert dg.loss_noise(0.97, 144) == pytest.approx(dg.noise_floor(0.97, 144) / 0.03)
    assert dg.loss_noise(0.90, 5000) == pytest.approx(0.085, abs=0.001)  # below OVERFIT_LOSS_RISE
    assert dg.loss_noise(1.0, 100) > 1  # no misclassified image: counted as one
    assert dg.loss_noise(0.9, None) == 0.0


@pytest.mark.parametrize("frame, expected", [(HEALTHY, ""), (OVERFIT, "overfitting")])
def test_healthy_and_overfitting_curves_keep_their_reading_on_a_small_validation_set(frame, expected):
    row = dg.experiment_row("x", [frame], ["finished"], dg.Context(delta=0.02, n_val=QUICK_VAL))
    assert row["flags"] == expected
    assert row["reading"].startswith("Overfitting" if expected else "Curves look healthy")
    assert "noise" not in row["reading"]
