"""Evaluation on the test split: metrics, confusion, predictions, misclassified, activations, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ablationlab import data, io, models, prepare
from ablationlab.evaluate import MISCLASSIFIED_SAMPLE, cli, evaluate
from ablationlab.recipe import complete
from ablationlab.runtime import build_network
from ablationlab.train import train

RECIPE = {"model": {"widths": [8, 16, 32], "hidden": [32]}, "optimizer": {"name": "adam", "lr": 3e-3}, "epochs": 2}


@pytest.fixture(scope="module")
def run(digits_dir, tmp_path_factory):
    """A short digits run, evaluated once."""
    out = tmp_path_factory.mktemp("eval")
    train(digits_dir, RECIPE, 0, out / "run", checkpoint_dir=out / "ckpt", threads=1)
    metrics = evaluate(digits_dir, out / "run", device="cpu")
    return out / "run", metrics


def test_metrics_json(digits_dir, run):
    run_dir, metrics = run
    meta = data.load_meta(digits_dir)
    _, y = data.load_split(digits_dir, "test")
    assert io.read_json(run_dir / "metrics.json") == metrics
    assert set(metrics) == {
        *("test_loss", "test_acc", "test_top5", "test_loss_best", "test_acc_best"),
        *("per_class_acc", "n_test", "status"),
    }
    assert metrics["n_test"] == len(y) == meta["splits"]["test"]
    assert metrics["status"] == "finished"
    assert 0.5 < metrics["test_acc"] <= metrics["test_top5"] <= 1.0
    assert 0 < metrics["test_loss"] < 2.5
    assert list(metrics["per_class_acc"]) == [str(c) for c in meta["classes"]]
    counts = torch.bincount(y, minlength=10).double()
    overall = sum(metrics["per_class_acc"][str(c)] * counts[i].item() for i, c in enumerate(meta["classes"]))
    assert overall / len(y) == pytest.approx(metrics["test_acc"], abs=1e-6)


def test_predictions_confusion_and_misclassified_agree(digits_dir, run):
    run_dir, metrics = run
    _, y = data.load_split(digits_dir, "test")
    pred = pd.read_csv(run_dir / "predictions.csv")
    assert list(pred.columns) == ["index", "label", "pred", "confidence", "correct"]
    assert pred["index"].tolist() == list(range(len(y))) and pred["label"].tolist() == y.tolist()
    assert (pred["correct"] == (pred["label"] == pred["pred"])).all()
    assert pred["correct"].mean() == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert ((pred["confidence"] > 0.1) & (pred["confidence"] <= 1.0)).all()  # max of 10 probabilities

    confusion = pd.read_csv(run_dir / "confusion.csv", dtype={"true": str})
    classes = list(metrics["per_class_acc"])
    assert list(confusion.columns) == ["true", *classes] and confusion["true"].tolist() == classes
    counts = confusion[classes].to_numpy()
    assert counts.sum() == len(y)
    assert counts.sum(axis=1).tolist() == torch.bincount(y, minlength=10).tolist()
    assert np.trace(counts) == pred["correct"].sum()
    expected = pd.crosstab(pred["label"], pred["pred"]).reindex(index=range(10), columns=range(10), fill_value=0)
    assert (counts == expected.to_numpy()).all()

    wrong = pd.read_csv(run_dir / "misclassified.csv")
    assert list(wrong.columns) == ["index", "label", "pred", "confidence"]
    expected_wrong = pred.loc[~pred["correct"], "index"].head(MISCLASSIFIED_SAMPLE).tolist()
    assert 0 < len(wrong) <= MISCLASSIFIED_SAMPLE and wrong["index"].tolist() == expected_wrong


def test_activations_are_the_first_conv_of_test_image_0(digits_dir, run):
    run_dir, _ = run
    meta = data.load_meta(digits_dir)
    x, _ = data.load_split(digits_dir, "test")
    with np.load(run_dir / "activations.npz", allow_pickle=False) as npz:
        image, conv1 = npz["image"], npz["conv1"]
    expected_image = (x[0].float() / 255 - torch.tensor(meta["mean"]).view(-1, 1, 1)) / torch.tensor(meta["std"]).view(
        -1, 1, 1
    )
    assert image.dtype == np.float32 and image.shape == (1, 8, 8)
    assert np.allclose(image, expected_image.numpy(), atol=1e-6)
    model = build_network(complete(RECIPE), meta)
    model.load_state_dict(io.load_torch(run_dir / "weights.pt"))
    with torch.no_grad():
        expected = models.first_conv(model)(torch.from_numpy(image)[None])[0]
    assert conv1.shape == (8, 8, 8) and np.allclose(conv1, expected.numpy(), atol=1e-5)


def test_top5_is_null_with_five_classes_or_fewer(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in range(5):
            folder = tmp_path / "images" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    prepare.prepare("imagefolder", tmp_path / "data", root=tmp_path / "images", val_size=5)
    train(
        tmp_path / "data",
        {**RECIPE, "epochs": 1, "batch_size": 5},
        0,
        tmp_path / "run",
        checkpoint_dir=tmp_path / "ckpt",
        threads=1,
    )
    metrics = evaluate(tmp_path / "data", tmp_path / "run", device="cpu")
    assert metrics["test_top5"] is None and metrics["n_test"] == 10
    assert list(metrics["per_class_acc"]) == [f"class{c}" for c in range(5)]


def test_missing_or_mismatched_weights_are_clear_errors(digits_dir, run, tmp_path):
    run_dir, _ = run
    with pytest.raises(FileNotFoundError, match="recipe.json is missing"):
        evaluate(digits_dir, tmp_path, device="cpu")
    for name in ("recipe.json", "train.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="weights.pt is missing"):
        evaluate(digits_dir, tmp_path, device="cpu")
    (tmp_path / "weights.pt").write_bytes((run_dir / "weights.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="weights_best.pt is missing"):
        evaluate(digits_dir, tmp_path, device="cpu")
    weights = io.load_torch(run_dir / "weights.pt")
    first = next(k for k in weights if k.endswith("weight"))
    weights[first] = torch.zeros(4, 1, 5, 5)
    io.save_torch(tmp_path / "weights_best.pt", weights)
    with pytest.raises(ValueError, match="weights_best.pt does not match the model"):
        evaluate(digits_dir, tmp_path, device="cpu")
    io.save_torch(tmp_path / "weights.pt", weights)
    with pytest.raises(ValueError, match="weights.pt does not match the model"):
        evaluate(digits_dir, tmp_path, device="cpu")
    assert not (tmp_path / "metrics.json").exists()


def test_cli(digits_dir, run, capsys, caplog):
    run_dir, metrics = run
    assert cli(["--data", str(digits_dir), "--run", str(run_dir), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"test_acc": metrics["test_acc"], "test_loss": metrics["test_loss"], "status": "finished"}
    assert cli(["--data", str(digits_dir), "--run", str(run_dir / "nope")]) == 2
    assert "is missing: train this run first" in caplog.text


def test_the_best_weights_equal_to_the_last_are_not_run_twice(digits_dir, run, tmp_path, monkeypatch):
    """weights_best.pt with the bytes of weights.pt (the last epoch was the best): its test logits are those
    of weights.pt, not computed again; every file written is the one of the evaluation that runs both."""
    run_dir, metrics = run
    assert (run_dir / "weights_best.pt").read_bytes() == (run_dir / "weights.pt").read_bytes()
    written = ("metrics.json", "predictions.csv", "misclassified.csv", "confusion.csv", "activations.npz")
    for name in ("recipe.json", "train.json", "weights.pt", "weights_best.pt"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    monkeypatch.setattr(io, "same_bytes", lambda a, b: False)  # both weights files run on the test split
    assert evaluate(digits_dir, tmp_path, device="cpu") == metrics
    for name in written:
        assert (tmp_path / name).read_bytes() == (run_dir / name).read_bytes(), name
