"""What a trained model needs to run: its network, its input pipeline, its loss and batched inference.

Shared by ``train`` (the loop), ``evaluate`` and ``figures``. The workflow declares the library
modules each stage imports as its code inputs, so the stages that only run a trained model
import this module, not the training loop: editing the loop re-runs the training jobs only.

A uint8 batch on the device becomes the network's input in :class:`Preprocess`: converted to
float in [0, 1], augmented (training only), resized if ``input.resize`` is set, standardized
with the train-split mean/std if ``input.standardize`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import augment, models
from . import device as devices

EVAL_BATCH_SIZE = 512


class Preprocess:
    """uint8 batch on the device → model input: /255, augment (training), resize, standardize."""

    def __init__(self, meta: Mapping[str, Any], recipe: Mapping[str, Any], device: torch.device):
        self.augment = augment.build(recipe["augment"])  # device-agnostic: no parameters or buffers
        self.resize = recipe["input"]["resize"]
        self.scale = self.shift = None
        if recipe["input"]["standardize"]:  # (x - mean) / std as x * scale + shift
            mean = torch.tensor(meta["mean"], dtype=torch.float64).view(1, -1, 1, 1)
            std = torch.tensor(meta["std"], dtype=torch.float64).view(1, -1, 1, 1)
            self.scale = (1.0 / std).to(device=device, dtype=torch.float32)
            self.shift = (-mean / std).to(device=device, dtype=torch.float32)
        self.memory_format = devices.memory_format(device)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = x.mul(1.0 / 255.0)  # uint8 -> float32 in [0, 1], one kernel
        if train:
            x = self.augment(x)
        if self.resize and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=False)
        if self.scale is not None:
            x = torch.addcmul(self.shift, x, self.scale)
        return x.contiguous(memory_format=self.memory_format)


def input_size(recipe: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
    """Side of the square image the network sees (``input.resize`` or the dataset's)."""
    return recipe["input"]["resize"] or meta["height"]


def build_network(recipe: Mapping[str, Any], meta: Mapping[str, Any], *, pretrained: bool = True) -> nn.Module:
    """The recipe's model for this dataset; ``pretrained=False`` skips loading transfer weights."""
    spec = dict(recipe["model"])
    if not pretrained:
        spec["weights"] = "none"
    return models.build_model(
        spec, in_channels=meta["channels"], image_size=input_size(recipe, meta), num_classes=meta["num_classes"]
    )


def _cross_entropy(num_classes: int, smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, y: F.cross_entropy(logits.float(), y, label_smoothing=smoothing)


def _mse(num_classes: int, smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MSE between softmax outputs and (smoothed) one-hot targets: the source reports' L2 loss."""

    def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(y, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes
        return F.mse_loss(logits.float().softmax(dim=1), target)

    return mse


LOSSES = {"cross_entropy": _cross_entropy, "mse": _mse}  # loss.name -> its maker (the schema's values)


def make_loss(loss: Mapping[str, Any], num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss_fn(logits, labels) -> mean loss`` of the recipe's ``loss`` section."""
    return LOSSES[loss["name"]](num_classes, float(loss["label_smoothing"]))


@torch.no_grad()
def predict(
    net: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Preprocess,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
) -> torch.Tensor:
    """float32 logits of ``net`` (in eval mode) for uint8 images ``x``, no augmentation; on ``device``."""
    outputs = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device, non_blocking=True)
        with devices.autocast(device):
            outputs.append(net(preprocess(batch, train=False)).float())
    return torch.cat(outputs)
