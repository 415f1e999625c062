"""Several runs per process (train_runs, `train --seed A B C`), full batches only (drop_last) and the best
epoch's weights, on a slice of the real CIFAR-10 and on digits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablationlab import io
from ablationlab import train as train_mod
from ablationlab.evaluate import evaluate
from ablationlab.train import TIMING_COLUMNS, cli, partial_batch, steps_per_epoch, train, train_runs

REPO = Path(__file__).resolve().parents[1]
# dropout, BatchNorm, augmentation and Adam (their RNG and state), and early stopping that ends the seeds at
# different epochs: everything that could leak from one run into the next in a shared process
SHARED = {
    "model": {"widths": [8, 16], "kernel_size": 3, "hidden": [32], "dropout": 0.2, "batch_norm": True},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "augment": [{"name": "crop", "padding": 1}, {"name": "hflip", "p": 0.5}],
    "early_stopping": {"enabled": True, "patience": 2, "monitor": "val_acc"},
    "batch_size": 64,
    "epochs": 8,
}
SEEDS = [0, 1, 2]


def _same_run(a: Path, b: Path) -> None:
    ha, hb = (pd.read_csv(p / "history.csv").drop(columns=list(TIMING_COLUMNS)) for p in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    for name in ("weights.pt", "weights_best.pt", "weights_init.pt"):
        wa, wb = io.load_torch(a / name), io.load_torch(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


@pytest.fixture(scope="module")
def alone(digits_dir, tmp_path_factory):
    """Each seed of SHARED trained by itself, as one process per run did."""
    out = tmp_path_factory.mktemp("alone")
    for seed in SEEDS:
        train(digits_dir, SHARED, seed, out / f"seed{seed}", checkpoint_dir=out / "ckpt" / str(seed), threads=1)
    return out


@pytest.mark.parametrize("together", [False, True])
def test_runs_in_one_process_are_bit_identical_to_runs_alone(digits_dir, alone, tmp_path, together):
    runs = [(s, tmp_path / f"seed{s}", tmp_path / "ckpt" / str(s)) for s in SEEDS]
    results = train_runs(digits_dir, SHARED, runs, threads=1, together=together)
    assert len({r["epochs_run"] for r in results}) > 1, "early stopping should end the seeds at different epochs"
    for seed in SEEDS:
        _same_run(alone / f"seed{seed}", tmp_path / f"seed{seed}")
        assert io.read_json(tmp_path / f"seed{seed}" / "train.json")["seed"] == seed


def test_cli_trains_every_seed_into_its_own_run_dir(digits_dir, alone, tmp_path, capsys, caplog):
    out, ckpt = str(tmp_path / "runs" / "seed{seed}"), str(tmp_path / "ckpt" / "{seed}")
    argv = ["--data", str(digits_dir), "--recipe", json.dumps(SHARED), "--seed", *map(str, SEEDS)]
    assert cli([*argv, "--out", out, "--checkpoint-dir", ckpt, "--threads", "1", "--evaluate"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["seed"] for p in printed] == SEEDS and all(p["status"] for p in printed)
    for seed in SEEDS:
        run = tmp_path / "runs" / f"seed{seed}"
        _same_run(alone / f"seed{seed}", run)
        assert io.read_json(run / "metrics.json")["test_acc"] > 0.5
    # several seeds need {seed} in the paths: one run must not overwrite another
    assert cli([*argv, "--out", str(tmp_path / "x"), "--checkpoint-dir", ckpt]) == 2
    assert "--out" in caplog.text and "needs {seed}" in caplog.text and not (tmp_path / "x").exists()
    assert cli([*argv, "--seed", "1", "1", "--out", out, "--checkpoint-dir", ckpt]) == 2
    assert "repeats a seed" in caplog.text


def test_a_killed_multi_seed_job_resumes_every_run_bit_exactly(digits_dir, alone, tmp_path):
    """SIGKILL while the second seed trains: the first is complete, the second resumes from its checkpoint,
    the third starts; every run ends as if never interrupted."""
    out, ckpt = tmp_path / "runs", tmp_path / "ckpt"
    cmd = [
        *(sys.executable, "-m", "ablationlab", "train", "--data", str(digits_dir), "--recipe", json.dumps(SHARED)),
        *("--seed", *map(str, SEEDS), "--out", str(out / "seed{seed}"), "--checkpoint-dir", str(ckpt / "{seed}")),
        *("--threads", "1", "--device", "cpu"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt / "1" / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint of the second seed after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "seed0" / "train.json").exists() and not (out / "seed2" / "train.json").exists()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from epoch" in rerun.stderr
    for seed in SEEDS:
        _same_run(alone / f"seed{seed}", out / f"seed{seed}")


# ----------------------------------------------------------------------------- full batches only


def test_steps_per_epoch_and_the_partial_batch():
    assert steps_per_epoch(172, 64) == 2 and partial_batch(172, 64, True) == 0
    assert steps_per_epoch(172, 64, drop_last=False) == 3 and partial_batch(172, 64, False) == 44
    assert steps_per_epoch(129, 64, drop_last=False) == 2 and partial_batch(129, 64, False) == 0  # one left over
    assert steps_per_epoch(128, 64, drop_last=False) == steps_per_epoch(128, 64) == 2


@pytest.mark.parametrize("drop_last, sizes", [(True, [64, 64]), (False, [64, 64, 44])])
def test_no_step_sees_fewer_than_batch_size_images_unless_asked(
    cifar_slice_dir, tmp_path, monkeypatch, drop_last, sizes
):
    """The real CIFAR slice: 172 training images, batch 64. Every optimizer step is counted as it runs."""
    seen: list[int] = []
    step = train_mod.train_step

    def counting(engine, inputs, targets):
        seen.append(len(targets))
        return step(engine, inputs, targets)

    monkeypatch.setattr(train_mod, "train_step", counting)
    recipe = {"drop_last": drop_last, "epochs": 3, "scheduler": {"name": "onecycle"}}  # onecycle counts steps too
    result = train(cifar_slice_dir, recipe, 0, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert seen == sizes * 3
    assert result["steps_per_epoch"] == len(sizes) and result["partial_batch"] == (0 if drop_last else 44)
    assert result["train_images"] == 172 and result["val_images"] == 20
    # each epoch still sees each image with the same chance: a fresh shuffle every epoch
    orders = [set(train_mod.epoch_order(172, 0, e, torch.device("cpu"))[:128].tolist()) for e in (1, 2, 3)]
    assert orders[0] != orders[1] != orders[2]


# ----------------------------------------------------------------------------- last and best


def test_the_best_epoch_is_kept_and_evaluated_beside_the_last(digits_dir, tmp_path):
    recipe = {"model": {"widths": [8, 16], "kernel_size": 3, "hidden": [32]}, "optimizer": {"lr": 0.3}, "epochs": 6}
    result = train(digits_dir, recipe, 0, tmp_path / "last", checkpoint_dir=tmp_path / "c1", threads=1)
    history = pd.read_csv(tmp_path / "last" / "history.csv")
    assert result["weights"] == "last" and result["best_epoch"] == int(history["val_loss"].idxmin()) + 1
    metrics = evaluate(digits_dir, tmp_path / "last", device="cpu")
    best, last = (io.load_torch(tmp_path / "last" / n) for n in ("weights_best.pt", "weights.pt"))
    assert (result["best_epoch"] == 6) == all(torch.equal(best[k], last[k]) for k in best)
    assert 0 <= metrics["test_acc_best"] <= 1 and metrics["test_loss_best"] > 0
    restored = {**recipe, "early_stopping": {"enabled": True, "patience": 100}}
    result = train(digits_dir, restored, 0, tmp_path / "best", checkpoint_dir=tmp_path / "c2", threads=1)
    assert result["weights"] == "best"
    metrics = evaluate(digits_dir, tmp_path / "best", device="cpu")
    assert metrics["test_acc_best"] == metrics["test_acc"]
    weights = io.load_torch(tmp_path / "best" / "weights.pt")
    assert all(torch.equal(weights[k], best[k]) for k in best)  # the same run, restored to its best epoch
