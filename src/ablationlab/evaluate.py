"""Stage ``evaluate``: score a trained run on the test split.

Loads ``recipe.json``, ``weights.pt`` (the run's result: the last epoch's weights, or the
best epoch's when early stopping restored them) and ``weights_best.pt`` (the best validation
epoch's, always) from the run directory, runs the test split through the same preprocessing
as validation (no augmentation) and writes, atomically (``docs/contracts.md``, section *Run*):

- ``metrics.json``: ``test_loss`` (the recipe's loss), ``test_acc``, ``test_top5``
  (null with ≤ 5 classes) of ``weights.pt``; ``test_loss_best``, ``test_acc_best`` of
  ``weights_best.pt`` (equal to the first two when early stopping restored the best epoch);
  ``per_class_acc`` ({class name: accuracy}), ``n_test``, ``status`` (copied from ``train.json``);
- ``confusion.csv``: first column ``true`` (class name), then one count column per
  predicted class;
- ``predictions.csv``: ``index``, ``label``, ``pred``, ``confidence`` (softmax
  probability of ``pred``), ``correct`` — one row per test image;
- ``misclassified.csv``: the first (lowest index) ≤ 16 wrong predictions, same columns
  minus ``correct``;
- ``activations.npz``: ``image`` (test image 0 after preprocessing, C×H×W float32) and
  ``conv1`` (the first conv layer's output for it, K×H×W float32).

A diverged run is evaluated too (its accuracy is that of the weights it kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data, io, layout, models
from . import device as devices
from .recipe import complete
from .runtime import Preprocess, build_network, make_loss, predict

log = logging.getLogger("ablationlab.evaluate")

MISCLASSIFIED_SAMPLE = 16


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def first_conv_activation(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Output of ``models.first_conv(model)`` for one preprocessed image (1×C×H×W), as K×H×W float32 on the CPU."""
    captured: list[torch.Tensor] = []
    handle = models.first_conv(model).register_forward_hook(lambda _m, _in, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    return captured[0][0].float().cpu()


def _load_model(run_dir: Path, name: str, recipe: dict[str, Any], meta: dict[str, Any], dev: torch.device):
    model = build_network(recipe, meta, pretrained=False)
    try:
        model.load_state_dict(io.load_torch(run_dir / name))
    except RuntimeError as exc:
        raise ValueError(f"{run_dir / name} does not match the model of {run_dir / 'recipe.json'}: {exc}") from exc
    return model.to(device=dev, memory_format=devices.memory_format(dev)).eval()


def evaluate_run(
    run_dir: str | os.PathLike, meta: dict[str, Any], x: torch.Tensor, y: torch.Tensor, dev: torch.device
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on the test images ``x`` (uint8) and labels ``y`` of the prepared data
    described by ``meta``; write the run's evaluation files; return metrics.json."""
    run_dir = Path(run_dir)
    for name in layout.EVALUATE_READS:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: train this run first")
    recipe = complete(io.read_json(run_dir / "recipe.json"))
    trained = io.read_json(run_dir / "train.json")
    status = trained["status"]
    classes = [str(c) for c in meta["classes"]]
    loss_fn = make_loss(recipe["loss"], meta["num_classes"])
    preprocess = Preprocess(meta, recipe, dev)
    y = y.cpu()

    model = _load_model(run_dir, "weights.pt", recipe, meta, dev)
    logits = predict(model, preprocess, x, dev).cpu()
    if trained.get("weights") == "best" or io.same_bytes(run_dir / "weights.pt", run_dir / "weights_best.pt"):
        best = logits  # the same weights: early stopping restored the best epoch, or the last epoch was the best
    else:
        best = predict(_load_model(run_dir, "weights_best.pt", recipe, meta, dev), preprocess, x, dev).cpu()
    loss = loss_fn(logits, y).item()
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    correct = pred == y
    k = meta["num_classes"]
    top5 = None
    if k > 5:
        top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
    confusion = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    per_class = {
        name: (confusion[i, i].item() / confusion[i].sum().item()) if confusion[i].sum() > 0 else None
        for i, name in enumerate(classes)
    }

    predictions = {
        "index": np.arange(len(y)),
        "label": y.numpy(),
        "pred": pred.numpy(),
        "confidence": confidence.numpy(),
        "correct": correct.numpy(),
    }
    io.write_table(run_dir / "predictions.csv", predictions)
    wrong = ~predictions["correct"]
    io.write_table(
        run_dir / "misclassified.csv",
        {k: predictions[k][wrong][:MISCLASSIFIED_SAMPLE] for k in ("index", "label", "pred", "confidence")},
    )
    matrix = confusion.numpy()
    io.write_table(run_dir / "confusion.csv", {"true": classes, **{c: matrix[:, j] for j, c in enumerate(classes)}})

    image = preprocess(x[:1].to(dev), train=False)
    with devices.autocast(dev):
        conv1 = first_conv_activation(model, image)
    _write_npz(run_dir / "activations.npz", image=image[0].float().cpu().numpy(), conv1=conv1.numpy())

    metrics = {
        "test_loss": loss,
        "test_acc": correct.float().mean().item(),
        "test_top5": top5,
        "test_loss_best": loss_fn(best, y).item(),
        "test_acc_best": (best.argmax(dim=1) == y).float().mean().item(),
        "per_class_acc": per_class,
        "n_test": len(y),
        "status": status,
    }
    io.write_json(run_dir / "metrics.json", metrics)
    log.info(
        "test_acc %.4f test_loss %.4f on %d images (%s; best epoch's weights: test_acc %.4f); wrote %s",
        metrics["test_acc"],
        loss,
        len(y),
        status,
        metrics["test_acc_best"],
        run_dir,
    )
    return metrics


def evaluate_runs(
    data_dir: str | os.PathLike, run_dirs: list[str | os.PathLike], *, device: str = "auto"
) -> list[dict[str, Any]]:
    """Evaluate each run in ``run_dirs`` on the test split of ``data_dir`` (read once); return their metrics.json."""
    dev = devices.pick(device)
    meta = data.load_meta(data_dir)
    x, y = data.load_split(data_dir, "test")
    x = x.to(dev)
    return [evaluate_run(run_dir, meta, x, y, dev) for run_dir in run_dirs]


def evaluate(data_dir: str | os.PathLike, run_dir: str | os.PathLike, *, device: str = "auto") -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on the test split of ``data_dir``; write the files; return metrics.json."""
    return evaluate_runs(data_dir, [run_dir], device=device)[0]


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab evaluate",
        description="Evaluate a trained run (recipe.json + weights.pt in --run) on the test split of --data; "
        "writes metrics.json, confusion.csv, predictions.csv, misclassified.csv and "
        "activations.npz into the run directory.",
    )
    parser.add_argument("--data", required=True, help="prepared data directory (from `prepare`)")
    parser.add_argument("--run", required=True, help="run directory written by `train`")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    args = parser.parse_args(argv)
    io.configure_logging()
    try:
        metrics = evaluate(args.data, args.run, device=args.device)
    except (ValueError, FileNotFoundError, data.DataError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps({k: metrics[k] for k in ("test_acc", "test_loss", "status")}))
    return 0
