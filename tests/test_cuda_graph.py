"""Which training steps become a CUDA graph, and the reason given for each that does not: decided from
the recipe and the device alone (:func:`ablationlab.cuda_graph.not_capturable`), so tested on the CPU."""

from __future__ import annotations

import pytest
import torch

from ablationlab.cuda_graph import CapturedStep, not_capturable
from ablationlab.recipe import complete
from ablationlab.train import make_step, setup

CUDA = torch.device("cuda")  # a device name: nothing runs on it here
CAPTURED = [
    {},  # the baseline: plain SGD, full batches, no augmentation
    {"optimizer": {"name": "momentum", "momentum": 0.9}},
    {"optimizer": {"name": "adam"}},
    {"optimizer": {"name": "adamw"}},
    {"optimizer": {"name": "rmsprop"}},
    {"augment": [{"name": "crop", "padding": 4}, {"name": "hflip", "p": 0.5}]},
    {"augment": [{"name": "color_jitter", "brightness": 0.2, "contrast": 0.2}]},  # no hue: plain torch
    {"scheduler": {"name": "cosine"}},
    {"scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}},
    {"model": {"name": "resnet18", "weights": "none", "train": "frozen"}},
]
EAGER = [
    ({"drop_last": False}, "drop_last: false makes the last batch of an epoch smaller (a graph has fixed shapes)"),
    ({"optimizer": {"name": "adagrad"}}, "optimizer adagrad reads its step counter on the host"),
    (
        {"augment": [{"name": "blur", "kernel_size": 3}]},
        "augmentation blur runs kornia's filters, which synchronise with the host",
    ),
    (
        {"augment": [{"name": "hflip", "p": 0.5}, {"name": "color_jitter", "hue": 0.1}]},
        "augmentation color_jitter runs kornia's filters, which synchronise with the host",
    ),
    ({"scheduler": {"name": "onecycle"}}, "onecycle changes the learning rate at every step"),
    # several reasons: the first in not_capturable's order is given
    (
        {"drop_last": False, "optimizer": {"name": "adagrad"}, "scheduler": {"name": "onecycle"}},
        "drop_last: false makes the last batch of an epoch smaller (a graph has fixed shapes)",
    ),
    (
        {"optimizer": {"name": "adagrad"}, "augment": [{"name": "blur", "kernel_size": 3}]},
        "optimizer adagrad reads its step counter on the host",
    ),
]


@pytest.mark.parametrize("override", CAPTURED, ids=[str(o) for o in CAPTURED])
def test_recipes_whose_step_is_captured_on_cuda(override):
    assert not_capturable(complete(override), CUDA, scaled=False, compiled=False) is None


@pytest.mark.parametrize("override, reason", EAGER, ids=[r for _, r in EAGER])
def test_recipes_that_train_eagerly_and_why(override, reason):
    assert not_capturable(complete(override), CUDA, scaled=False, compiled=False) == reason


@pytest.mark.parametrize(
    "device, scaled, compiled, reason",
    [
        (torch.device("cpu"), False, False, "CUDA graphs need a CUDA device, not cpu"),
        (torch.device("mps"), False, False, "CUDA graphs need a CUDA device, not mps"),
        (CUDA, False, True, "--compile runs the model through torch.compile instead"),
        (CUDA, True, False, "float16 loss scaling checks for inf/nan on the host"),
    ],
)
def test_devices_and_options_that_train_eagerly_and_why(device, scaled, compiled, reason):
    assert not_capturable(complete({}), device, scaled=scaled, compiled=compiled) == reason


def test_the_device_reason_comes_before_the_recipes():
    recipe = complete({"drop_last": False, "optimizer": {"name": "adagrad"}})
    assert not_capturable(recipe, torch.device("cpu"), scaled=True, compiled=True).startswith("CUDA graphs need")


def test_on_the_cpu_the_engine_keeps_the_reason_and_steps_eagerly():
    meta = {"channels": 3, "height": 8, "width": 8, "num_classes": 10, "mean": [0.5] * 3, "std": [0.2] * 3}
    engine = setup(complete({"model": {"widths": [4], "hidden": []}}), meta, 100, torch.device("cpu"))
    assert engine.eager_reason == "CUDA graphs need a CUDA device, not cpu"
    x, y = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (100,))
    step = make_step(engine, x, y)
    assert not isinstance(step, CapturedStep)
    step(torch.arange(64))  # one eager step: the sums hold its loss and correct count
    assert engine.loss_sum.item() > 0 and 0 <= engine.correct.item() <= 64
