"""Batched, per-image data augmentation on the training device.

:func:`build` turns the ``augment`` list of a completed, checked recipe (every item with all its keys:
:func:`ablationlab.recipe.complete`) into an ``nn.Module`` that maps a
float batch B×C×H×W in [0, 1] to an augmented batch of the same shape, dtype and
device. Every image draws its own random parameters (a batched torchvision v2
transform draws one set for the whole batch, which is a different experiment), all
from torch's global RNG on the batch's device, so restoring the RNG state replays
exactly the same augmentations. ``p`` is the probability, per image, that an
augmentation applies; an image it does not apply to is returned unchanged (exactly).

The ops are small tensor ops (flip via ``torch.where``, crop via one ``gather`` on
the zero-padded batch, rotation via ``affine_grid``/``grid_sample``) plus kornia's
functional filters for hue and blur: measured faster than the equivalent
``kornia.augmentation`` modules (``benchmarks/augment_speed.py``). Deliberate
differences from torchvision: color jitter applies brightness, contrast,
saturation, hue in that fixed order; erasing clamps an oversized rectangle to the
image instead of re-drawing up to 10 times. Saturation, hue and grayscale leave
1-channel images unchanged (as torchvision does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablationlab.recipe import AUGMENT_DEFAULTS

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# --------------------------------------------------------------------------- ops


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws from U(lo, hi) on ``like``'s device, in float32."""
    return torch.rand(n, device=like.device) * (hi - lo) + lo


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


class _Op(nn.Module):
    """One augmentation: draw a per-image mask with probability ``p``, apply ``_transform``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"augment: expected a batch B×C×H×W, got shape {tuple(x.shape)}")
        if self.p == 0.0 or x.shape[0] == 0:
            return x
        mask = torch.rand(x.shape[0], device=x.device) < self.p
        return self._transform(x, mask)

    def _transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


class HFlip(_Op):
    def _transform(self, x, mask):
        return torch.where(_bcast(mask), x.flip(-1), x)


class VFlip(_Op):
    def _transform(self, x, mask):
        return torch.where(_bcast(mask), x.flip(-2), x)


class Crop(_Op):
    """Random crop of the original size from the image zero-padded by ``padding``."""

    def __init__(self, padding: int, p: float):
        super().__init__(p)
        self.padding = int(padding)

    def _transform(self, x, mask):
        pad = self.padding
        if pad == 0:
            return x
        b, c, h, w = x.shape
        wp = w + 2 * pad
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
        dy = torch.where(mask, dy, pad)  # offset `pad` = the original image
        dx = torch.where(mask, dx, pad)
        rows = dy.view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
        cols = dx.view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
        index = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
        padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)
        return padded.gather(2, index).view(b, c, h, w)


class Rotation(_Op):
    """Rotate by an angle drawn from [-degrees, degrees] (or [min, max]); counter-clockwise
    for positive angles, bilinear, corners filled with 0 (as torchvision)."""

    def __init__(self, degrees: float | Sequence[float], p: float):
        super().__init__(p)
        self.degrees = tuple(degrees) if isinstance(degrees, (list, tuple)) else (-degrees, degrees)

    def _transform(self, x, mask):
        b, _, h, w = x.shape
        angle = torch.deg2rad(_uniform(b, *self.degrees, like=x))
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        # output -> input sampling grid in normalised coordinates (aspect-corrected)
        theta = torch.stack(
            [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.where(_bcast(mask), rotated, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel luminance B×1×H×W of an RGB batch."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (_bcast(factor) * x + (1 - _bcast(factor)) * other).clamp_(0, 1)


class ColorJitter(_Op):
    """Brightness, contrast, saturation factors from [max(0, 1-v), 1+v]; hue shift from
    [-hue, hue] (fraction of the colour circle); applied in that order."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float):
        super().__init__(p)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def _factor(self, v: float, x: torch.Tensor) -> torch.Tensor:
        return _uniform(x.shape[0], max(0.0, 1 - v), 1 + v, like=x).to(x.dtype)

    def _transform(self, x, mask):
        out, rgb = x, x.shape[1] == 3
        if self.brightness:
            out = (out * _bcast(self._factor(self.brightness, x))).clamp_(0, 1)
        if self.contrast:
            mean = (_gray(out) if rgb else out).mean(dim=(1, 2, 3), keepdim=True)
            out = _blend(out, mean, self._factor(self.contrast, x))
        if self.saturation and rgb:
            out = _blend(out, _gray(out), self._factor(self.saturation, x))
        if self.hue and rgb:
            import kornia  # here, not at the top: ~0.3 s of imports that most recipes never use

            shift = _uniform(x.shape[0], -self.hue, self.hue, like=x) * (2 * math.pi)
            out = kornia.enhance.adjust_hue(out, shift.to(x.dtype)).clamp_(0, 1)
        return torch.where(_bcast(mask), out, x)


class Grayscale(_Op):
    def _transform(self, x, mask):
        if x.shape[1] != 3:
            return x
        return torch.where(_bcast(mask), _gray(x).expand_as(x), x)


class Blur(_Op):
    """Gaussian blur, kernel ``kernel_size``, sigma drawn per image from ``sigma``, reflect border."""

    def __init__(self, kernel_size: int, sigma: float | Sequence[float], p: float):
        super().__init__(p)
        self.kernel_size = int(kernel_size)
        self.sigma = tuple(sigma) if isinstance(sigma, (list, tuple)) else (sigma, sigma)

    def _transform(self, x, mask):
        if self.kernel_size == 1:
            return x
        sigma = _uniform(x.shape[0], *self.sigma, like=x).unsqueeze(1).expand(-1, 2)
        k = self.kernel_size
        if min(x.shape[-2:]) <= k // 2:  # reflect padding needs pad < size
            return x
        import kornia  # here, not at the top (see ColorJitter)

        blurred = kornia.filters.gaussian_blur2d(x, (k, k), sigma, border_type="reflect")
        return torch.where(_bcast(mask), blurred.to(x.dtype), x)


class Erasing(_Op):
    """Cutout: one rectangle per image (area fraction from ``scale``, aspect ratio
    log-uniform in ``ratio``, clamped to the image) set to 0."""

    def __init__(self, scale: Sequence[float], ratio: Sequence[float], p: float):
        super().__init__(p)
        self.scale = tuple(scale) if isinstance(scale, (list, tuple)) else (scale, scale)
        self.ratio = tuple(ratio) if isinstance(ratio, (list, tuple)) else (ratio, ratio)

    def _transform(self, x, mask):
        b, _, h, w = x.shape
        area = _uniform(b, *self.scale, like=x) * (h * w)
        ratio = torch.exp(_uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), like=x))
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = (torch.rand(b, device=x.device) * (h - eh + 1)).floor()
        x0 = (torch.rand(b, device=x.device) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        box = (
            (rows >= y0.view(b, 1, 1))
            & (rows < (y0 + eh).view(b, 1, 1))
            & (cols >= x0.view(b, 1, 1))
            & (cols < (x0 + ew).view(b, 1, 1))
        )
        erase = (box & mask.view(b, 1, 1)).unsqueeze(1)
        return x.masked_fill(erase, 0)


# augment.name -> its op, whose parameters are the augmentation's keys (tests/test_defaults.py: the schema's)
OPS: dict[str, type[_Op]] = {
    "hflip": HFlip,
    "vflip": VFlip,
    "crop": Crop,
    "rotation": Rotation,
    "color_jitter": ColorJitter,
    "grayscale": Grayscale,
    "blur": Blur,
    "erasing": Erasing,
}


def build(augment: list[dict[str, Any]]) -> nn.Module:
    """The recipe's ``augment`` list as one module (applied in order; ``[]`` = identity)."""
    return nn.Sequential(*(OPS[item["name"]](**{k: v for k, v in item.items() if k != "name"}) for item in augment))


# --------------------------------------------------------------------------- preview


def preview(images: torch.Tensor, augment: list[dict[str, Any]], seed: int = 0):
    """A grid of each augmentation applied alone to the same images.

    ``images``: uint8 N×C×H×W. Row 0 shows the originals, then one row per
    augmentation (forced to ``p=1`` so that its effect is visible). The global RNG
    is left untouched. Returns a matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if images.ndim != 4 or images.dtype != torch.uint8 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"preview: images must be uint8 N×C×H×W with 1 or 3 channels, got {images.dtype} {tuple(images.shape)}"
        )
    x = images.float().cpu() / 255
    rows = [("original", x)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for item in augment:
            shown = [k for k in AUGMENT_DEFAULTS[item["name"]] if k != "p"]  # in the schema's order
            label = item["name"] + "".join(f"\n{k}={item[k]}" for k in shown)
            rows.append((label, build([{**item, "p": 1.0}])(x)))
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.2, 1.2 * len(rows)), squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = batch[c].clamp(0, 1).permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    return fig
