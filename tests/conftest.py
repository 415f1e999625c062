"""Shared fixtures: ``digits_dir`` (scikit-learn's digits) and ``cifar_slice_dir`` (a slice of the real CIFAR-10)
prepared by the real ``prepare``; ``study_runs``, a small real study trained on digits and summarised."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import make_study

from ablationlab import io, prepare, summarize

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


@pytest.fixture(scope="session")
def study_runs(tmp_path_factory, digits_dir):
    """A small real study (7 experiments × 2 seeds on digits) with its summary: (root, data_dir)."""
    root = tmp_path_factory.mktemp("study")
    make_study(root, digits_dir)
    summarize.summarize(root / "study" / "experiments.json", root / "runs", root / "summary")
    # the MLflow writer's record (ablationlab.track, after summarize): one tracked run, its parent
    io.write_csv(
        root / "summary" / "mlflow.csv",
        pd.DataFrame(
            [
                {
                    "experiment": "baseline",
                    "seed": 0,
                    "kind": "child",
                    "mlflow_run_id": "abc123",
                    "mlflow_parent_run_id": "p1",
                    "mlflow_experiment_id": "1",
                    "mlflow_url": "#/experiments/1/runs/abc123",
                    "run_key": "k",
                },
                {
                    "experiment": "baseline",
                    "seed": "",
                    "kind": "parent",
                    "mlflow_run_id": "p1",
                    "mlflow_parent_run_id": "",
                    "mlflow_experiment_id": "1",
                    "mlflow_url": "#/experiments/1/runs/p1",
                    "run_key": "kp",
                },
            ]
        ),
    )
    return root, digits_dir
