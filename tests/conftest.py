"""Shared fixtures: ``digits_dir`` (scikit-learn's digits) and ``cifar_slice_dir`` (a slice of the real CIFAR-10)
prepared by the real ``prepare``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablationlab import prepare

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """Path of digits prepared once per session (val_size 0.1, split_seed 0): 1×8×8, 10 classes.

    Shared: treat it as read-only (copy it with ``shutil.copytree`` to corrupt or modify it).
    """
    out = tmp_path_factory.mktemp("data") / "digits"
    prepare.prepare("digits", out, root=tmp_path_factory.mktemp("raw"), val_size=0.1, split_seed=0)
    return out


CIFAR_SLICE = Path(__file__).resolve().parent / "data" / "cifar10_slice"  # real CIFAR-10 JPEGs (README there)


@pytest.fixture(scope="session")
def cifar_slice_dir(tmp_path_factory):
    """The real CIFAR-10 slice prepared once per session as an image folder (val_size 0.1, split_seed 0):
    3×32×32, 3 classes, 172 train / 20 val / 48 test images. Read-only, as ``digits_dir``."""
    out = tmp_path_factory.mktemp("data") / "cifar_slice"
    prepare.prepare("imagefolder", out, root=CIFAR_SLICE, val_size=0.1, split_seed=0)
    return out
