"""Training loop: quality on digits, bit-identical resume (in-process and after SIGKILL),
divergence, early stopping, schedulers/optimizers, recipe errors, device selection, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ablationlab import data, io
from ablationlab import device as devices
from ablationlab import train as train_mod
from ablationlab.evaluate import evaluate
from ablationlab.recipe import complete
from ablationlab.train import (
    HISTORY_COLUMNS,
    OPTIMIZERS,
    TIMING_COLUMNS,
    cli,
    frozen_features,
    make_optimizer,
    make_scheduler,
    setup,
    train,
)

REPO = Path(__file__).resolve().parents[1]
# Every piece of state a resume must restore: adam moments, a per-batch schedule, dropout
# and augmentation RNG, early-stopping counters and best weights.
RESUME_RECIPE = {
    "model": {"widths": [8, 16, 32], "hidden": [32], "dropout": 0.2, "batch_norm": True},
    "optimizer": {"name": "adam", "lr": 3e-3},
    "scheduler": {"name": "onecycle"},
    "augment": [{"name": "crop", "padding": 1}, {"name": "hflip", "p": 0.5}],
    "early_stopping": {"enabled": True, "patience": 100, "monitor": "val_acc"},
    "batch_size": 50,
    "epochs": 6,
}
SEED = 3


def _resume_args(data: Path, run: Path, ckpt: Path) -> list[str]:
    """`train` options of a RESUME_RECIPE run (one CPU thread)."""
    return [
        *("--data", str(data), "--recipe", json.dumps(RESUME_RECIPE), "--seed", str(SEED)),
        *("--out", str(run), "--checkpoint-dir", str(ckpt), "--threads", "1", "--device", "cpu"),
    ]


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns=list(TIMING_COLUMNS))


def _assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(_history(a), _history(b), check_exact=True)
    wa, wb = io.load_torch(a / "weights.pt"), io.load_torch(b / "weights.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ia, ib = io.load_torch(a / "weights_init.pt"), io.load_torch(b / "weights_init.pt")
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    ja, jb = io.read_json(a / "train.json"), io.read_json(b / "train.json")
    for key in ("status", "epochs_run", "best_epoch", "best_val_loss", "best_val_acc", "params"):
        assert ja[key] == jb[key], key


@pytest.fixture(scope="module")
def reference(digits_dir, tmp_path_factory):
    """An uninterrupted run of RESUME_RECIPE."""
    out = tmp_path_factory.mktemp("reference")
    train(digits_dir, RESUME_RECIPE, SEED, out / "run", checkpoint_dir=out / "ckpt", threads=1)
    return out / "run"


def test_baseline_cnn_reaches_95_percent_on_digits(digits_dir, tmp_path):
    recipe = {"optimizer": {"name": "adam", "lr": 1e-3}, "epochs": 15}  # the source reports' simple_cnn otherwise
    result = train(digits_dir, recipe, 0, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert result["status"] == "finished" and result["epochs_run"] == 15
    assert result["wall_seconds"] < 60
    metrics = evaluate(digits_dir, tmp_path / "run", device="cpu")
    assert metrics["test_acc"] >= 0.95, metrics


def test_outputs_follow_the_contract(reference):
    assert sorted(p.name for p in reference.iterdir()) == [
        "history.csv",
        "recipe.json",
        "train.json",
        "weights.pt",
        "weights_best.pt",
        "weights_init.pt",
    ]
    assert not list(reference.glob(".*"))  # no temp files left
    history = pd.read_csv(reference / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, 7))
    assert (history["images_per_s"] > 0).all()
    assert history["lr"].nunique() == 6  # onecycle: a different lr at every epoch start
    assert io.read_json(reference / "recipe.json") == complete(RESUME_RECIPE)
    meta = io.read_json(reference / "train.json")
    assert meta["status"] == "finished" and meta["device"] == "cpu" and meta["seed"] == SEED
    assert meta["best_val_acc"] == history["val_acc"].max()
    best = history.loc[history["val_acc"].idxmax()]
    assert meta["best_epoch"] == best["epoch"]
    assert meta["params"] == meta["params_total"] > 0
    init, final = io.load_torch(reference / "weights_init.pt"), io.load_torch(reference / "weights.pt")
    assert init.keys() == final.keys()
    assert not any(torch.equal(init[k], final[k]) for k in init if k.endswith("weight"))


def test_stop_after_then_resume_is_bit_identical(digits_dir, reference, tmp_path, caplog):
    stopped = train(
        digits_dir, RESUME_RECIPE, SEED, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1, stop_after=2
    )
    assert stopped == {"status": "stopped", "epochs_run": 2}
    assert (tmp_path / "ckpt" / "last.pt").is_file() and not (tmp_path / "run" / "train.json").exists()
    with caplog.at_level("INFO", logger="ablationlab.train"):
        train(digits_dir, RESUME_RECIPE, SEED, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert "resuming from epoch 2" in caplog.text
    _assert_same_run(reference, tmp_path / "run")


def test_sigkill_mid_training_then_rerun_resumes_and_matches(digits_dir, reference, tmp_path, caplog):
    ckpt, run = tmp_path / "ckpt", tmp_path / "run"
    cmd = [sys.executable, "-m", "ablationlab", "train", *_resume_args(digits_dir, run, ckpt)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "train.json").exists()
    done = io.load_torch(ckpt / "last.pt")["epoch"]
    assert 1 <= done < RESUME_RECIPE["epochs"]

    caplog.clear()
    with caplog.at_level("INFO", logger="ablationlab.train"):
        assert cli(cmd[4:]) == 0  # the same command line, run again (in-process: saves a torch import)
    assert f"resuming from epoch {done}" in caplog.text
    assert "epoch 1/6" not in caplog.text  # earlier epochs were not trained again
    _assert_same_run(reference, run)


def test_evaluate_killed_after_training_resumes_at_the_end_and_matches(digits_dir, reference, tmp_path, caplog):
    """The pipeline's `train --evaluate` job killed while evaluating: Snakemake removes all its outputs;
    the re-run resumes at the last epoch (trains nothing) and evaluates exactly as `evaluate` does."""
    run, ckpt = tmp_path / "run", tmp_path / "ckpt"
    train(digits_dir, RESUME_RECIPE, SEED, run, checkpoint_dir=ckpt, threads=1)
    shutil.rmtree(run)
    with caplog.at_level("INFO"):
        assert cli([*_resume_args(digits_dir, run, ckpt), "--evaluate"]) == 0
    assert "resuming from epoch 6" in caplog.text and "epoch 6/6" not in caplog.text
    _assert_same_run(reference, run)
    separate = shutil.copytree(reference, tmp_path / "separate")
    evaluate(digits_dir, separate, device="cpu")
    for name in ("metrics.json", "confusion.csv", "predictions.csv", "misclassified.csv"):
        assert (run / name).read_bytes() == (separate / name).read_bytes(), name
    with np.load(run / "activations.npz") as got, np.load(separate / "activations.npz") as want:
        assert got.files == want.files and all(np.array_equal(got[k], want[k]) for k in want.files)


def test_checkpoint_of_another_seed_is_not_resumed(digits_dir, tmp_path, caplog):
    recipe = {**RESUME_RECIPE, "epochs": 2}
    train(digits_dir, recipe, 0, tmp_path / "a", checkpoint_dir=tmp_path / "ckpt", threads=1, stop_after=1)
    with caplog.at_level("INFO", logger="ablationlab.train"):
        train(digits_dir, recipe, 1, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", threads=1, stop_after=1)
    assert "belongs to another recipe, seed or dataset" in caplog.text
    assert "resuming" not in caplog.text
    assert io.load_torch(tmp_path / "ckpt" / "last.pt")["seed"] == 1


def test_divergence_is_a_result_not_a_crash(digits_dir, tmp_path, capsys):
    recipe = json.dumps({"optimizer": {"name": "sgd", "lr": 1e4}, "epochs": 3})
    code = cli(
        [
            "--data",
            str(digits_dir),
            "--recipe",
            recipe,
            "--seed",
            "0",
            "--out",
            str(tmp_path / "run"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    meta = io.read_json(tmp_path / "run" / "train.json")
    assert meta["status"] == "diverged" and meta["stop_reason"] == "non_finite_loss"
    assert "non-finite" in meta["message"] and "learning rate 10000" in meta["message"]
    assert meta["epochs_run"] < 3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert not math.isfinite(history["train_loss"].iloc[-1]) or not math.isfinite(history["val_loss"].iloc[-1])
    weights = io.load_torch(tmp_path / "run" / "weights.pt")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    if meta["epochs_run"] == 1:  # diverged at once: the initial weights are kept
        init = io.load_torch(tmp_path / "run" / "weights_init.pt")
        assert all(torch.equal(init[k], weights[k]) for k in init)
    assert json.loads(capsys.readouterr().out)["status"] == "diverged"
    assert evaluate(digits_dir, tmp_path / "run", device="cpu")["status"] == "diverged"


def test_early_stopping_restores_the_best_weights(digits_dir, tmp_path):
    # min_delta so large that nothing improves after epoch 1: stop after 1 + patience epochs
    recipe = {
        "model": {"widths": [8, 16, 32]},
        "epochs": 10,
        "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 2, "min_delta": 100.0},
    }
    result = train(digits_dir, recipe, 0, tmp_path / "es", checkpoint_dir=tmp_path / "c1", threads=1)
    assert result["status"] == "early_stopped" and result["epochs_run"] == 3 and result["best_epoch"] == 1
    assert result["stop_reason"] == "early_stopping" and "best epoch 1" in result["message"]
    one = {**recipe, "epochs": 1, "early_stopping": {"enabled": False}}
    train(digits_dir, one, 0, tmp_path / "one", checkpoint_dir=tmp_path / "c2", threads=1)
    best, first = io.load_torch(tmp_path / "es" / "weights.pt"), io.load_torch(tmp_path / "one" / "weights.pt")
    assert all(torch.equal(best[k], first[k]) for k in best)


def test_mse_loss_and_step_scheduler(digits_dir, tmp_path):
    recipe = {
        "model": {"widths": [8, 16, 32], "batch_norm": True},
        "loss": {"name": "mse"},
        "epochs": 3,
        "optimizer": {"name": "momentum", "lr": 0.5, "nesterov": True},
        "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
    }
    result = train(digits_dir, recipe, 0, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert result["status"] == "finished"
    assert history["lr"].tolist() == [0.5, 0.25, 0.125]
    assert (history["train_loss"] < 0.1).all()  # MSE of probabilities is at most 2/C per sample
    assert history["val_acc"].iloc[-1] > 0.8


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps(name):
    model = torch.nn.Linear(4, 2)
    opt = make_optimizer(model.parameters(), complete({"optimizer": {"name": name, "lr": 0.1}})["optimizer"])
    before = model.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_schedulers():
    def lrs(sched, epochs=4, steps=3, metric=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        s = make_scheduler(
            opt, complete({"scheduler": sched})["scheduler"], lr=1.0, epochs=epochs, steps_per_epoch=steps
        )
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched["name"] == "onecycle":
                for _ in range(steps):
                    s.step()
            elif sched["name"] == "plateau":
                s.step(metric)
            elif s is not None:
                s.step()
        return out

    assert lrs({"name": "none"}) == [1.0] * 4
    assert lrs({"name": "cosine"})[0] == 1.0 and lrs({"name": "cosine"})[2] == pytest.approx(0.5)
    assert max(lrs({"name": "onecycle"})) <= 1.0 and lrs({"name": "onecycle"})[0] < 0.1
    assert lrs({"name": "plateau", "patience": 0, "gamma": 0.5}, metric=1.0) == [1.0, 1.0, 0.5, 0.25]


def test_frozen_transfer_only_optimizes_the_head():
    recipe = complete({"model": {"name": "resnet18", "weights": "none", "train": "frozen"}, "input": {"resize": 32}})
    meta = {"channels": 3, "height": 8, "width": 8, "num_classes": 10, "mean": [0.5] * 3, "std": [0.2] * 3}
    engine = setup(recipe, meta, 100, torch.device("cpu"))
    optimized = [p for group in engine.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in optimized) == 512 * 10 + 10


FROZEN = {
    "model": {"name": "resnet18", "weights": "none", "train": "frozen"},
    "input": {"resize": 16, "standardize": True},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "batch_size": 64,
    "epochs": 2,
}


def _whole_network(engine, recipe, x_train, x_val):
    """frozen_features declining: every step runs the whole network on the images."""
    return engine, x_train, x_val


def _whole_state(state, init):
    """without_init declining: last.pt holds every tensor of the model (the checkpoints before version 3)."""
    return {k: v.detach().cpu() for k, v in state.items()}


def test_frozen_features_computed_once_give_the_same_run_bit_for_bit(digits_dir, tmp_path, monkeypatch, caplog):
    """The head trained on features computed once per split, resumed from a checkpoint without the frozen
    backbone, vs the whole network run on the images every step, checkpointed whole (batch norm in eval mode
    in both): the same history, train.json and weights files, byte for byte (CPU)."""
    with caplog.at_level("INFO", logger="ablationlab.train"):
        train(digits_dir, FROZEN, 1, tmp_path / "cached", checkpoint_dir=tmp_path / "c1", threads=1, stop_after=1)
        ckpt = io.load_torch(tmp_path / "c1" / "last.pt")
        train(digits_dir, FROZEN, 1, tmp_path / "cached", checkpoint_dir=tmp_path / "c1", threads=1)  # resumed
    assert caplog.text.count("features computed once") == 2 and "resuming from epoch 1" in caplog.text
    # the frozen backbone (11M parameters) is not in the checkpoint: the head and its best-epoch copy are
    assert [k for k, v in ckpt["model"].items() if v is not None] == ["fc.weight", "fc.bias"]
    assert [k for k, v in ckpt["best_state"].items() if v is not None] == ["fc.weight", "fc.bias"]
    assert (tmp_path / "c1" / "last.pt").stat().st_size < 200_000 < (tmp_path / "c1" / "weights_init.pt").stat().st_size
    monkeypatch.setattr(train_mod, "frozen_features", _whole_network)
    monkeypatch.setattr(train_mod, "without_init", _whole_state)
    train(digits_dir, FROZEN, 1, tmp_path / "whole", checkpoint_dir=tmp_path / "c2", threads=1)
    assert io.load_torch(tmp_path / "c2" / "last.pt")["model"]["conv1.weight"] is not None
    _assert_same_run(tmp_path / "whole", tmp_path / "cached")
    for name in ("weights_init.pt", "weights.pt", "weights_best.pt"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cached" / name).read_bytes(), name
    assert io.read_json(tmp_path / "cached" / "train.json")["params"] == 512 * 10 + 10


def test_a_checkpoint_without_its_initial_weights_is_not_resumed(digits_dir, reference, tmp_path, caplog):
    """last.pt leaves out what still holds the initial weights: resumed only next to the weights_init.pt it was
    saved with (its sha256); another one (or none) starts the run over, which then matches the reference."""
    ckpt = tmp_path / "ckpt"
    train(digits_dir, RESUME_RECIPE, SEED, tmp_path / "run", checkpoint_dir=ckpt, threads=1, stop_after=2)
    init = io.load_torch(ckpt / "weights_init.pt")
    io.save_torch(ckpt / "weights_init.pt", {k: v + 1 if v.is_floating_point() else v for k, v in init.items()})
    with caplog.at_level("INFO", logger="ablationlab.train"):
        train(digits_dir, RESUME_RECIPE, SEED, tmp_path / "run", checkpoint_dir=ckpt, threads=1)
    assert "not the initial weights it was saved with" in caplog.text and "resuming" not in caplog.text
    _assert_same_run(reference, tmp_path / "run")
    for name in ("weights_init.pt", "weights.pt", "weights_best.pt"):
        assert (tmp_path / "run" / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize(
    "override, cached",
    [
        ({}, True),
        ({"model": {"name": "resnet18", "weights": "none", "train": "finetune"}}, False),
        ({"augment": [{"name": "hflip", "p": 0.5}]}, False),
        ({"model": {"name": "simple_cnn"}}, False),
    ],
)
def test_which_recipes_train_the_head_on_features_computed_once(override, cached):
    recipe = complete({**FROZEN, **override})
    meta = {"channels": 1, "height": 8, "width": 8, "num_classes": 10, "mean": [0.5], "std": [0.2]}
    engine = setup(recipe, meta, 100, torch.device("cpu"))
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    used, x_train, x_val = frozen_features(engine, recipe, x, x[:7])
    assert (used is not engine) == cached
    if cached:
        assert used.net is engine.model.fc and used.model is engine.model
        assert x_train.shape == (30, 512) and x_val.shape == (7, 512) and x_train.dtype == torch.float32
        torch.testing.assert_close(used.net(x_train), engine.model.eval()(engine.preprocess(x)), rtol=0, atol=0)
    else:
        assert x_train is x and used.net is engine.net


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optimizer": {"name": "adamx"}}, "optimizer.name: unknown value 'adamx'"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr: -1 is less than or equal to the minimum of 0"),
        ({"optimizer": {"lr": float("nan")}}, "optimizer.lr: nan is not a finite number"),
        ({"optimizer": {"learning_rate": 0.1}}, "optimizer.learning_rate: unknown key 'learning_rate'"),
        ({"scheduler": {"name": "cyclic"}}, "scheduler.name: unknown value 'cyclic'"),
        ({"loss": {"name": "hinge"}}, "loss.name: unknown value 'hinge'"),
        ({"early_stopping": {"monitor": "val_f1"}}, "early_stopping.monitor: unknown value 'val_f1'"),
        ({"epochs": 0}, "epochs: 0 is less than the minimum of 1"),
        ({"batch_size": 5000}, "batch_size: 5000 is larger than the training split (1293 images)"),
        ({"model": {"name": "lenet"}}, "model.name: unknown value 'lenet'"),
        ({"augment": [{"name": "mixup"}]}, "augment[0].name: unknown value 'mixup'"),
    ],
)
def test_bad_recipe_fails_before_training(digits_dir, tmp_path, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train(digits_dir, override, 0, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "ckpt").exists()


def test_corrupted_data_is_refused_before_training(digits_dir, tmp_path, caplog):
    corrupt = tmp_path / "digits"
    shutil.copytree(digits_dir, corrupt)
    blob = bytearray((corrupt / "train_x.pt").read_bytes())
    blob[-10] ^= 0xFF
    (corrupt / "train_x.pt").write_bytes(bytes(blob))
    with pytest.raises(data.DataError, match="train_x.pt is corrupted"):
        train(corrupt, {}, 0, tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", threads=1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "ckpt" / "last.pt").exists()
    assert (
        cli(
            [
                "--data",
                str(corrupt),
                "--recipe",
                "{}",
                "--seed",
                "0",
                "--out",
                str(tmp_path / "run"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
            ]
        )
        == 2
    )
    assert "train_x.pt is corrupted" in caplog.text


def test_cli_reports_bad_recipe_and_reads_recipe_files(digits_dir, tmp_path, caplog):
    args = [
        "--data",
        str(digits_dir),
        "--seed",
        "0",
        "--out",
        str(tmp_path / "run"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--threads",
        "1",
    ]
    assert cli([*args, "--recipe", '{"optimizer": {"name": "adamx"}}']) == 2
    assert "optimizer.name: unknown value 'adamx'" in caplog.text
    assert cli([*args, "--recipe", str(tmp_path / "missing.json")]) == 2
    assert "--recipe: no such file" in caplog.text
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"model": {"widths": [4, 8, 8]}, "epochs": 1}))
    assert cli([*args, "--recipe", str(path)]) == 0
    assert io.read_json(tmp_path / "run" / "recipe.json")["model"]["widths"] == [4, 8, 8]


def test_cli_help_lists_options(capsys):
    from ablationlab.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--data",
        "--recipe",
        "--seed",
        "--out",
        "--checkpoint-dir",
        "--device",
        "--threads",
        "--stop-after",
        "--compile",
    ):
        assert option in out


def test_device_pick():
    assert devices.pick("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert devices.pick("auto").type == expected
    with pytest.raises(ValueError, match="device: unknown device 'gpu0'"):
        devices.pick("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            devices.pick("cuda")
        cpu = torch.device("cpu")
        assert devices.amp_dtype(cpu) is None and devices.memory_format(cpu) == torch.contiguous_format
        assert not devices.grad_scaler(cpu).is_enabled()
