"""Shared fixtures: ``digits_dir`` is scikit-learn's digits prepared by the real ``prepare``."""

from __future__ import annotations

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
