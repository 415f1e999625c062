"""Changed inputs re-run exactly what depends on them (the real workflow, smoke-sized, slow).

A study on a tiny image folder (the baseline and one transfer variant reading a local weights
file), run for its group targets (training and evaluation, not the report), then changed:

- nothing changed, or a touched image: prepare_data at most, nothing re-trains;
- an added or overwritten image: a dry run plans prepare_data and every train job (which also
  evaluates); when only test images changed, the jobs resume at their last epoch: they re-evaluate
  without re-training;
- the weights file replaced by another with an older mtime (``cp -p``): that experiment only;
- after a complete run of the whole study, a touched image: prepare_data only, not the summary,
  MLflow writer, figures or report after the train jobs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import copy_workflow, overlay, plan, snakemake
from PIL import Image

pytestmark = pytest.mark.slow

TARGETS = ["baseline", "transfer"]  # the group targets: train + evaluate of every experiment
TRAINING = {("prepare_data", None, None), ("train_baseline", "baseline", "0"), ("train_transfer", "transfer/file", "0")}


def _image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)


def _folder(root: Path) -> None:
    """images/{train,test}/{a,b}/: 8 training and 3 test images of 8x8 per class."""
    for s, (split, n) in enumerate((("train", 8), ("test", 3))):
        for c, cls in enumerate("ab"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                _image(root / split / cls / f"{i}.png", seed=100 * s + 10 * c + i)


def _weights(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def _study_data() -> dict:
    return {"dataset": "imagefolder", "root": "images", "val_size": 4, "image_size": None}


def _study(cfg: dict) -> None:
    cfg["data"] = _study_data()
    cfg["baseline"]["batch_size"] = 4
    cfg["ablations"] = [
        {
            "id": "transfer",
            "title": "Transfer",
            "variants": {"file": {"model": {"name": "resnet18", "weights": "weights.pt", "train": "frozen"}}},
        }
    ]


def _plan(work: Path, config: str) -> set:
    return {j for j in plan(work, "--configfile", "presets/smoke.yaml", config, "--", *TARGETS) if j[0] not in TARGETS}


def _run(work: Path, config: str) -> set[str]:
    """Run the group targets; the rules that ran (group target rules left out)."""
    proc = snakemake(work, config, "--", *TARGETS)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", out, re.MULTILINE)) - set(TARGETS)


def test_changed_image_folder_or_weights_rerun_exactly_what_reads_them(tmp_path):
    work = copy_workflow(tmp_path / "study")
    images = work / "images"
    _folder(images)
    _weights(work / "weights.pt", seed=0)
    config = overlay(work, "images.yaml", _study)
    assert _run(work, config) == {j[0] for j in TRAINING}
    assert _plan(work, config) == set()

    # touched, same bytes: prepare_data runs and writes identical tensors; nothing re-trains
    image = images / "train" / "a" / "0.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert _plan(work, config) == TRAINING  # the dry run cannot know yet that they are identical
    assert _run(work, config) == {"prepare_data"}
    assert _plan(work, config) == set()

    # an added image, then the same image removed again: back to the recorded listing
    _image(images / "train" / "b" / "new.png", seed=99)
    assert _plan(work, config) == TRAINING
    (images / "train" / "b" / "new.png").unlink()
    assert _plan(work, config) == set()

    # an overwritten test image: planned in full; the run re-evaluates and trains nothing
    _image(images / "test" / "b" / "1.png", seed=123)
    assert _plan(work, config) == TRAINING
    assert _run(work, config) == {j[0] for j in TRAINING}
    for exp in ("baseline", "transfer/file"):
        log = (work / "results/logs/train" / exp / "seed0.log").read_text()
        assert "resuming from epoch" in log and not re.search(r"epoch 1/\d+ train_loss", log), log[-3000:]
    assert _plan(work, config) == set()

    # another weights file with an older mtime, as `cp -p` leaves it: that experiment only
    _weights(tmp_path / "other.pt", seed=1)
    os.utime(tmp_path / "other.pt", (1e9, 1e9))
    shutil.copy2(tmp_path / "other.pt", work / "weights.pt")
    assert _plan(work, config) == {("train_transfer", "transfer/file", "0")}


def _ran(proc: subprocess.CompletedProcess) -> set[str]:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", out, re.MULTILINE))


def test_a_touched_image_reruns_only_prepare_data_after_a_complete_study(tmp_path):
    """The smoke study (its groups, summary, MLflow record, figures, report) on an image folder."""
    work = copy_workflow(tmp_path / "study")
    _folder(work / "images")

    def on_images(cfg: dict) -> None:
        cfg["data"] = _study_data()
        cfg["baseline"]["batch_size"] = 4

    config = overlay(work, "images.yaml", on_images)
    assert "render_report" in _ran(snakemake(work, config))
    image = work / "images" / "train" / "a" / "0.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert _ran(snakemake(work, config)) - {"all"} == {"prepare_data"}  # `all` runs nothing
    again = snakemake(work, config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
