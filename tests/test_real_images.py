"""Real pictures (a committed slice of the real CIFAR-10, tests/data/cifar10_slice): the image-folder path,
the augmentations, a run trained on them, its first-layer filters and activation maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ablationlab import augment, data, figures, io
from ablationlab.evaluate import evaluate
from ablationlab.recipe import complete
from ablationlab.train import train

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"model": {"widths": [16, 32], "hidden": [32]}, "batch_size": 32, "epochs": 3}


def test_the_image_folder_reads_the_real_pictures(cifar_slice_dir):
    meta = io.read_json(cifar_slice_dir / "meta.json")
    assert meta["classes"] == ["airplane", "automobile", "cat"]  # sorted folder names
    assert meta["splits"] == {"train": 172, "val": 20, "test": 48} and (meta["channels"], meta["height"]) == (3, 32)
    x, y = data.load_split(cifar_slice_dir, "train")  # sha256-checked
    assert x.dtype == torch.uint8 and x.shape == (172, 3, 32, 32) and sorted(set(y.tolist())) == [0, 1, 2]
    # photographs, not noise: neighbouring pixels agree far more than random ones, and the means are CIFAR's
    img = x.float() / 255
    neighbours = (img[..., 1:] - img[..., :-1]).abs().mean()
    shuffled = (img.flatten(2)[..., torch.randperm(1024)] - img.flatten(2)).abs().mean()
    assert neighbours < 0.4 * shuffled
    assert all(0.4 < m < 0.6 for m in meta["mean"]) and all(0.2 < s < 0.3 for s in meta["std"])


def _augment(item: dict):
    """The augmentation module of one recipe item, defaults filled in (as a completed recipe has them)."""
    return augment.build(complete({"augment": [item]})["augment"])


def test_augmentations_on_real_pictures_draw_per_image(cifar_slice_dir):
    x = data.load_split(cifar_slice_dir, "test")[0][:16].float() / 255
    torch.manual_seed(0)
    flipped = _augment({"name": "hflip", "p": 1.0})(x)
    assert torch.equal(flipped, x.flip(-1))
    torch.manual_seed(0)
    cropped = _augment({"name": "crop", "padding": 4})(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(len(x)):  # every output is a 32x32 window of its own zero-padded picture
        match = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(cropped[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert match, f"image {i} is not a crop of itself"
        offsets.append(match[0])
    assert len(set(offsets)) > 4  # drawn per image, not once per batch
    jittered = _augment({"name": "color_jitter", "p": 1.0})(x)
    assert not torch.equal(jittered, x) and jittered.min() >= 0 and jittered.max() <= 1


@pytest.fixture(scope="module")
def real_run(cifar_slice_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    result = train(cifar_slice_dir, RECIPE, 0, out / "run", checkpoint_dir=out / "ckpt", threads=1)
    metrics = evaluate(cifar_slice_dir, out / "run", device="cpu")
    return out / "run", result, metrics


def test_a_run_on_real_pictures_learns(real_run):
    run, result, metrics = real_run
    assert result["status"] == "finished" and result["partial_batch"] == 0 and result["steps_per_epoch"] == 5
    assert metrics["n_test"] == 48 and set(metrics["per_class_acc"]) == {"airplane", "automobile", "cat"}
    history = io.load_torch(run / "weights_init.pt"), io.load_torch(run / "weights.pt")
    assert not torch.equal(history[0]["conv1.weight"], history[1]["conv1.weight"])


def test_filters_and_activation_maps_of_a_real_picture(real_run, tmp_path):
    run, _, _ = real_run
    before, after = (io.load_torch(run / n)["conv1.weight"] for n in ("weights_init.pt", "weights.pt"))
    fig = figures.draw_filters(before, after)
    fig.savefig(tmp_path / "filters.png")
    assert before.shape == (16, 3, 5, 5) and (tmp_path / "filters.png").stat().st_size > 5000
    acts = np.load(run / "activations.npz")
    image, maps = acts["image"], acts["conv1"]
    assert image.shape == (3, 32, 32) and maps.shape == (16, 32, 32)
    # a real picture: the filters respond differently to it (not a constant map per channel)
    assert np.std(maps.reshape(16, -1), axis=1).min() > 0 and len({round(float(m.mean()), 4) for m in maps}) > 8
    fig = figures.draw_activations(image, maps)
    fig.savefig(tmp_path / "activations.png")
    assert (tmp_path / "activations.png").stat().st_size > 5000


def test_throughput_modes_share_their_device_handling():
    """Every mode takes the data through make_engine, which puts it on the training device (CPU images
    indexed with device indices crash on CUDA); on this machine all run on the CPU."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import throughput

    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (256,))
    recipe = throughput.complete({"augment": [{"name": "crop", "padding": 4}, {"name": "hflip", "p": 0.5}]})
    dev = torch.device("cpu")
    for bench in (throughput.bench_library, throughput.bench_compute):
        assert bench(recipe, x, y, dev, batches=2) > 0
    engine, xd, yd = throughput.make_engine(recipe, x, y, dev)
    assert xd.device == yd.device == next(engine.model.parameters()).device
