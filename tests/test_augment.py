"""ablationlab.augment: per-image random augmentations, preview; the augment list's check and defaults."""

from __future__ import annotations

import re

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ablationlab import augment
from ablationlab.recipe import AUGMENT_DEFAULTS, complete
from ablationlab.schema import check_recipe

matplotlib.use("Agg")
torch.set_num_threads(1)

NAMES = list(AUGMENT_DEFAULTS)
# per op: settings under which p=1 changes every (random) image for sure
ALWAYS_CHANGES = {
    "hflip": {},
    "vflip": {},
    "crop": {"padding": 4},  # changes all but the 1/81 centred crops: checked separately
    "rotation": {"degrees": [10, 20]},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1},
    "grayscale": {},
    "blur": {"sigma": [0.5, 2.0]},
    "erasing": {},
}


def batch(n=16, c=3, size=16, seed=123, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g, dtype=torch.float64).to(dtype)


def changed(out, x):
    return (out != x).flatten(1).any(1)


def completed(items):
    """``items`` with each augmentation's defaults, as in a completed recipe (what build is given)."""
    return complete({"augment": items})["augment"]


def build(items):
    return augment.build(completed(items))


# ------------------------------------------------------------------ check and defaults


@pytest.mark.parametrize(
    "items, message",
    [
        (
            [{"name": "hflip"}, {"name": "crop"}, {"name": "foo"}],
            "augment[2].name: unknown value 'foo'; choose one of: hflip, vflip, crop, rotation, "
            "color_jitter, grayscale, blur, erasing",
        ),
        ([{"name": "hflip", "p": 1.5}], "augment[0].p: 1.5 is greater than the maximum of 1"),
        ([{"name": "hflip", "p": -0.1}], "augment[0].p: -0.1 is less than the minimum of 0"),
        (
            [{"name": "crop", "pading": 4}],
            "augment[0].pading: unknown key 'pading' (did you mean 'padding'?); allowed keys: name, p, padding",
        ),
        ([{"name": "crop", "padding": -1}], "augment[0].padding: -1 is less than the minimum of 0"),
        ([{"name": "blur", "kernel_size": 4}], "augment[0].kernel_size: must be odd, got 4"),
        ([{"name": "blur", "sigma": [2.0, 1.0]}], "augment[0].sigma: min > max in [2.0, 1.0]"),
        ([{"name": "blur", "sigma": 0}], "augment[0].sigma: 0 is less than or equal to the minimum of 0"),
        ([{"name": "rotation", "degrees": [30, -10]}], "augment[0].degrees: min > max in [30, -10]"),
        ([{"name": "erasing", "scale": [0.1, 1.5]}], "augment[0].scale[1]: 1.5 is greater than the maximum of 1"),
        ([{"name": "color_jitter", "hue": 0.7}], "augment[0].hue: 0.7 is greater than the maximum of 0.5"),
        ([{"p": 0.5}], "augment[0]: missing required key 'name'"),
        (["hflip"], "augment[0]: expected object, got string 'hflip'"),
        ({"name": "hflip"}, "augment: expected array, got object"),
    ],
)
def test_a_bad_augment_list_is_refused_naming_it(items, message):
    """Refused where a recipe is checked (the study, train); build trusts a checked recipe."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_recipe(complete({"augment": items}))


def test_complete_fills_defaults_and_keeps_order():
    out = completed([{"name": "crop", "padding": 2}, {"name": "hflip"}])
    assert out == [{"name": "crop", "padding": 2, "p": 1.0}, {"name": "hflip", "p": 0.5}]
    assert [type(m).__name__ for m in augment.build(out)] == ["Crop", "HFlip"]


# ------------------------------------------------------------------ generic properties


def test_empty_list_is_identity():
    x = batch()
    assert torch.equal(build([])(x), x)


@pytest.mark.parametrize("name", NAMES)
def test_p0_is_identity(name):
    x = batch()
    torch.manual_seed(0)
    out = build([{"name": name, **ALWAYS_CHANGES[name], "p": 0.0}])(x)
    assert torch.equal(out, x)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "crop"])
def test_p1_always_applies(name):
    x = batch(n=32)
    torch.manual_seed(0)
    out = build([{"name": name, **ALWAYS_CHANGES[name], "p": 1.0}])(x)
    assert changed(out, x).all()


@pytest.mark.parametrize("name", NAMES)
def test_p_half_applies_to_about_half_the_images(name):
    x = batch(n=400, size=8)
    torch.manual_seed(1)
    out = build([{"name": name, **ALWAYS_CHANGES[name], "p": 0.5}])(x)
    frac = changed(out, x).float().mean().item()
    assert 0.38 < frac < 0.62, frac
    # untouched images are returned bit-exactly
    untouched = ~changed(out, x)
    assert torch.equal(out[untouched], x[untouched])


@pytest.mark.parametrize("name", ["crop", "rotation", "color_jitter", "blur", "erasing", "hflip"])
def test_each_image_draws_its_own_parameters(name):
    """The same image 32 times in one batch comes out in many different versions."""
    x = batch(n=1).expand(32, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = build([{"name": name, **ALWAYS_CHANGES[name], "p": 1.0 if name != "hflip" else 0.5}])(x)
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct >= (2 if name == "hflip" else 10), distinct


def test_reproducible_under_seed_and_rng_state():
    pipeline = build([{"name": n, **ALWAYS_CHANGES[n], "p": 0.7} for n in NAMES])
    x = batch()
    torch.manual_seed(7)
    a = pipeline(x)
    torch.manual_seed(7)
    b = pipeline(x)
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    c = pipeline(x)
    torch.set_rng_state(state)
    d = pipeline(x)
    assert torch.equal(c, d)
    assert not torch.equal(a, c)  # the RNG moved on


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels", [1, 3])
def test_dtype_shape_device_and_range_preserved(dtype, channels):
    pipeline = build([{"name": n, "p": 1.0} for n in NAMES])
    x = batch(n=5, c=channels, size=12, dtype=dtype)
    torch.manual_seed(0)
    out = pipeline(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_runs_on_cuda():
    x = batch().cuda()
    out = build([{"name": n, "p": 1.0} for n in NAMES])(x)
    assert out.device == x.device and out.shape == x.shape


def test_rejects_non_batch_input():
    with pytest.raises(ValueError, match=r"augment: expected a batch B×C×H×W, got shape \(3, 8, 8\)"):
        build([{"name": "hflip"}])(torch.rand(3, 8, 8))


# ------------------------------------------------------------------ each op does what it says


def test_flips_are_exact_mirrors():
    x = batch()
    assert torch.equal(build([{"name": "hflip", "p": 1}])(x), x.flip(-1))
    assert torch.equal(build([{"name": "vflip", "p": 1}])(x), x.flip(-2))


def test_crop_is_a_window_of_the_zero_padded_image_at_a_random_offset():
    pad, x = 3, batch(n=64, size=10)
    torch.manual_seed(0)
    out = build([{"name": "crop", "padding": pad, "p": 1.0}])(x)
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4)
    offsets = []
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 10])
        ]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 20  # spread over the 49 possible offsets
    assert {dy for dy, _ in offsets} == set(range(2 * pad + 1))


def test_rotation_matches_torchvision_rotate():
    x = batch(n=4, size=20)
    out = build([{"name": "rotation", "degrees": [30, 30], "p": 1}])(x)
    ref = TF.rotate(x, 30.0, interpolation=TF.InterpolationMode.BILINEAR)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    quarter = build([{"name": "rotation", "degrees": [90, 90], "p": 1}])(x)
    torch.testing.assert_close(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision():
    x = batch()
    out = build([{"name": "grayscale", "p": 1}])(x)
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0)


def test_brightness_scales_each_image_by_its_own_factor():
    x = batch(n=32) * 0.5  # stays below 1 after scaling by <= 1.5: no clamping
    torch.manual_seed(0)
    out = build([{"name": "color_jitter", "brightness": 0.5, "contrast": 0, "saturation": 0, "p": 1}])(x)
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio.min(1).values, ratio.max(1).values, atol=1e-4, rtol=0)
    factors = ratio[:, 0]
    assert factors.min() >= 0.5 - 1e-4 and factors.max() <= 1.5 + 1e-4
    assert factors.std() > 0.1


def test_saturation_zero_is_grayscale_and_hue_matches_torchvision_hue_range():
    x = batch()
    out = build([{"name": "color_jitter", "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0.5, "p": 1}])(x)
    assert changed(out, x).all()
    # hue shifts keep the value channel (max over RGB)
    torch.testing.assert_close(out.amax(1), x.amax(1), atol=1e-4, rtol=0)


def test_blur_matches_torchvision_gaussian_blur():
    x = batch()
    out = build([{"name": "blur", "kernel_size": 5, "sigma": [1.2, 1.2], "p": 1}])(x)
    ref = TF.gaussian_blur(x, [5, 5], [1.2, 1.2])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_erasing_zeroes_one_rectangle_of_the_configured_area():
    x = batch(n=64, size=20) * 0.9 + 0.05  # no zeros before erasing
    torch.manual_seed(0)
    out = build([{"name": "erasing", "scale": [0.05, 0.2], "ratio": [0.5, 2.0], "p": 1}])(x)
    erased = (out == 0).all(1)  # B×H×W, all channels zero
    assert torch.equal(out[~erased.unsqueeze(1).expand_as(out)], x[~erased.unsqueeze(1).expand_as(x)])
    for mask in erased:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and box.sum() == mask.sum()  # one solid rectangle
        assert 0.02 <= mask.float().mean() <= 0.3  # area near [0.05, 0.2] after rounding


# ------------------------------------------------------------------ preview


def test_preview_has_one_row_per_augmentation_plus_originals_and_keeps_rng():
    images = (batch(n=5, size=12) * 255).to(torch.uint8)
    items = [{"name": "hflip"}, {"name": "crop", "padding": 2}, {"name": "erasing"}]
    state = torch.get_rng_state()
    fig = augment.preview(images, completed(items), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    axes = fig.get_axes()
    assert len(axes) == (len(items) + 1) * 5
    assert [axes[r * 5].get_ylabel().split("\n")[0] for r in range(4)] == ["original", "hflip", "crop", "erasing"]
    # the same images in every row; the original row is the input
    assert (axes[0].get_images()[0].get_array() * 255).round().astype("uint8").tolist() == images[0].permute(
        1, 2, 0
    ).tolist()
    gray = augment.preview(images[:, :1], completed([{"name": "rotation"}]))
    assert len(gray.get_axes()) == 2 * 5
    matplotlib.pyplot.close("all")


def test_preview_rejects_float_images():
    with pytest.raises(ValueError, match="preview: images must be uint8"):
        augment.preview(torch.rand(2, 3, 8, 8), [])
