"""ablationlab.models: the recipe's models, weights files, parameter table."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torchvision
from torch import nn

from ablationlab import io
from ablationlab.models import (
    ACTIVATIONS,
    WeightsError,
    build_model,
    count_params,
    first_conv,
    frozen_head,
    param_formula,
    summary,
)
from ablationlab.recipe import complete
from ablationlab.schema import check_recipe

torch.set_num_threads(1)


def model(keys: dict) -> dict:
    """The model section of a completed recipe: ``keys`` over the defaults (what build_model is given)."""
    return complete({"model": keys})["model"]


def n_modules(net, kind):
    return sum(isinstance(m, kind) for m in net.modules())


# ------------------------------------------------------------------ simple_cnn / vgg_style


def test_baseline_is_the_seeds_390410_parameter_cnn():
    net = build_model(model({"name": "simple_cnn"}), 3, 32, 10)
    assert count_params(net) == (390_410, 390_410)
    assert [type(m).__name__ for m in net] == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in net if isinstance(c, nn.Conv2d)] == [
        (3, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
        (64, 128, (5, 5), (2, 2)),
    ]
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (2048, 64, 10)
    assert net(torch.rand(4, 3, 32, 32)).shape == (4, 10)


def test_empty_model_section_means_the_defaults():
    assert count_params(build_model(model({}), 3, 32, 10)) == (390_410, 390_410)


def test_batch_norm_after_each_conv_and_in_the_head():
    net = build_model(model({"batch_norm": True}), 3, 32, 10)
    assert n_modules(net, nn.BatchNorm2d) == 3 and n_modules(net, nn.BatchNorm1d) == 1
    assert count_params(net)[0] == 390_410 + 2 * (32 + 64 + 128) + 2 * 64
    names = list(dict(net.named_children()))
    assert names[:4] == ["conv1", "bn1", "act1", "pool1"]  # conv -> BN -> activation -> pool


@pytest.mark.parametrize("where, conv, head", [("head", 0, 1), ("conv", 3, 0), ("both", 3, 1)])
def test_dropout_placement(where, conv, head):
    net = build_model(model({"dropout": 0.3, "dropout_where": where, "hidden": [64]}), 3, 32, 10)
    drops = [name for name, m in net.named_children() if isinstance(m, nn.Dropout)]
    assert sum(n.startswith("drop_fc") for n in drops) == head
    assert sum(not n.startswith("drop_fc") for n in drops) == conv
    assert all(m.p == 0.3 for m in net.modules() if isinstance(m, nn.Dropout))
    assert n_modules(build_model(model({"dropout": 0.0, "dropout_where": "both"}), 3, 32, 10), nn.Dropout) == 0


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation(activation):
    net = build_model(model({"activation": activation}), 3, 32, 10)
    assert n_modules(net, ACTIVATIONS[activation]) == 4
    assert n_modules(net, nn.ReLU) == (4 if activation == "relu" else 0)


def test_widths_kernel_convs_per_block_and_hidden_shape_the_network():
    net = build_model(model({"widths": [8, 16], "kernel_size": 3, "convs_per_block": 2, "hidden": [32, 16]}), 3, 16, 7)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 8, (3, 3)),
        (8, 8, (3, 3)),
        (8, 16, (3, 3)),
        (16, 16, (3, 3)),
    ]
    expected = (27 + 1) * 8 + (72 + 1) * 8 + (72 + 1) * 16 + (144 + 1) * 16 + (16 * 4 * 4 + 1) * 32 + 33 * 16 + 17 * 7
    assert count_params(net) == (expected, expected)
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 7)
    no_hidden = build_model(model({"hidden": []}), 3, 32, 10)
    assert [type(m).__name__ for m in no_hidden][-2:] == ["Flatten", "Linear"]


def test_small_images_skip_pooling_once_the_map_is_1x1():
    """8×8 digits through four blocks: 8 -> 4 -> 2 -> 1 -> (no pool) 1."""
    net = build_model(
        model({"name": "vgg_style", "widths": [16, 32, 64, 128], "kernel_size": 3, "convs_per_block": 2}), 1, 8, 10
    )
    assert n_modules(net, nn.MaxPool2d) == 3
    assert net.fc1.in_features == 128
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    baseline = build_model(model({}), 1, 8, 10)
    assert baseline.fc1.in_features == 128 and baseline(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_vgg_style_always_has_batch_norm():
    net = build_model(
        model(
            {
                "name": "vgg_style",
                "widths": [64, 128, 256, 512],
                "kernel_size": 3,
                "convs_per_block": 2,
                "hidden": [512],
                "dropout": 0.5,
            }
        ),
        3,
        32,
        10,
    )
    assert n_modules(net, nn.BatchNorm2d) == 8 and n_modules(net, nn.BatchNorm1d) == 1
    assert n_modules(net, nn.MaxPool2d) == 4 and net.fc1.in_features == 512 * 2 * 2
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("init", ["kaiming", "xavier"])
def test_init_reinitialises_weights_and_zeroes_biases(init):
    torch.manual_seed(0)
    default = build_model(model({}), 3, 32, 10)
    torch.manual_seed(0)
    net = build_model(model({"init": init}), 3, 32, 10)
    torch.manual_seed(0)
    again = build_model(model({"init": init}), 3, 32, 10)
    assert not torch.equal(net.conv1.weight, default.conv1.weight)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert all(torch.count_nonzero(m.bias) == 0 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    fan_in = 3 * 5 * 5
    std = net.conv1.weight.std().item()
    target = (2 / fan_in) ** 0.5 if init == "kaiming" else 2**0.5 * (2 / (fan_in + 32 * 25)) ** 0.5
    assert 0.8 * target < std < 1.2 * target


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"name": "foo"},
            "model.name: unknown value 'foo'; choose one of: simple_cnn, vgg_style, resnet18, vgg11_bn",
        ),
        (
            {"activation": "swish"},
            "model.activation: unknown value 'swish'; choose one of: relu, leaky_relu, elu, selu, gelu, tanh, sigmoid",
        ),
        ({"init": "orthogonal"}, "model.init: unknown value 'orthogonal'; choose one of: default, kaiming, xavier"),
        (
            {"dropout_where": "everywhere"},
            "model.dropout_where: unknown value 'everywhere'; choose one of: head, conv, both",
        ),
        ({"train": "partial"}, "model.train: unknown value 'partial'; choose one of: frozen, finetune"),
        ({"widht": [1]}, "model.widht: unknown key 'widht' (did you mean 'widths'?); allowed keys: activation,"),
        ({"dropout": 1.5}, "model.dropout: 1.5 is greater than or equal to the maximum of 1"),
        ({"dropout": float("nan")}, "model.dropout: nan is not a finite number"),
        ({"widths": [32, 0]}, "model.widths[1]: 0 is less than the minimum of 1"),
        ({"widths": []}, "model.widths: [] should be non-empty"),
        ({"hidden": 64}, "model.hidden: expected array, got integer 64"),
        ({"kernel_size": 2.5}, "model.kernel_size: expected integer, got number 2.5"),
        ({"kernel_size": 4}, "model.kernel_size: must be odd, got 4"),
        ({"batch_norm": "yes"}, "model.batch_norm: expected boolean, got string 'yes'"),
        ({"weights": "imagenet"}, "model.weights: only resnet18 and vgg11_bn take weights (use none), got 'imagenet'"),
        ({"train": "frozen"}, "model.train: only resnet18 and vgg11_bn can be frozen (use finetune), got 'frozen'"),
        ({"name": "resnet18", "weights": ""}, "model.weights: '' should be non-empty"),
        ([("name", "simple_cnn")], "model: expected object, got array"),
    ],
)
def test_bad_model_section_is_a_clear_error(section, message):
    """Refused where a recipe is checked (the study, train); build_model trusts a checked recipe."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_recipe(complete({"model": section}))


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="num_classes: must be a positive integer, got 0"):
        build_model(model({}), 3, 32, 0)
    with pytest.raises(ValueError, match=re.escape("model.name: vgg11_bn needs images of at least 32×32, got 8×8")):
        build_model(model({"name": "vgg11_bn"}), 1, 8, 10)
    with pytest.raises(ValueError, match="model.name: resnet18 takes 1- or 3-channel images, the data has 4"):
        build_model(model({"name": "resnet18"}), 4, 32, 10)


# ------------------------------------------------------------------ transfer models


def test_resnet18_new_head_frozen_and_finetune():
    fine = build_model(model({"name": "resnet18"}), 3, 32, 10)
    assert isinstance(fine, torchvision.models.ResNet) and fine.fc.out_features == 10
    assert count_params(fine) == (11_181_642, 11_181_642)
    frozen = build_model(model({"name": "resnet18", "train": "frozen"}), 3, 32, 10)
    assert count_params(frozen) == (512 * 10 + 10, 11_181_642)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert frozen(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # keys are torchvision's own: files are interchangeable with torchvision models
    assert fine.state_dict().keys() == torchvision.models.resnet18().state_dict().keys()


def test_gray_images_are_repeated_to_three_channels():
    net = build_model(model({"name": "resnet18"}), 1, 8, 10).eval()
    gray = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(net(gray), net.__class__.forward(net, gray.expand(-1, 3, -1, -1)))
    assert first_conv(net) is net.conv1 and net.conv1.in_channels == 3


def test_vgg11_bn_frozen_only_the_new_classifier_layer_learns():
    net = build_model(model({"name": "vgg11_bn", "train": "frozen"}), 3, 32, 5)
    assert net.classifier[6].out_features == 5
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["classifier.6.weight", "classifier.6.bias"]
    assert count_params(net)[0] == 4096 * 5 + 5
    assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    assert frozen_head(net, model({"name": "vgg11_bn", "train": "frozen"})) is None  # its frozen dropout draws


@pytest.fixture(scope="module")
def imagenet_shaped_resnet(tmp_path_factory):
    """A state_dict file exactly as torchvision's resnet18 has it (1000-class head)."""
    torch.manual_seed(42)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    io.save_torch(path, state)
    return path, state


def test_weights_file_loads_backbone_and_keeps_a_fresh_head(imagenet_shaped_resnet):
    path, state = imagenet_shaped_resnet
    net = build_model(model({"name": "resnet18", "weights": str(path), "train": "frozen"}), 3, 32, 10)
    loaded = net.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (10, 512)
    assert count_params(net)[0] == 5130
    # a file without head keys (a backbone) loads too
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    io.save_torch(path.with_name("backbone.pt"), backbone)
    net2 = build_model(model({"name": "resnet18", "weights": str(path.with_name("backbone.pt"))}), 1, 32, 3)
    assert torch.equal(net2.conv1.weight, state["conv1.weight"])


def test_imagenet_weights_come_through_torchvision_cache(imagenet_shaped_resnet, tmp_path, monkeypatch):
    path, state = imagenet_shaped_resnet
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a torch file")
    with pytest.raises(
        WeightsError, match=re.escape(f"model.weights: could not load the ImageNet weights of resnet18 from {cached}")
    ):
        build_model(model({"name": "resnet18", "weights": "imagenet"}), 3, 32, 10)
    cached.write_bytes(path.read_bytes())
    net = build_model(model({"name": "resnet18", "weights": "imagenet"}), 3, 32, 10)
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match=re.escape(f"model.weights: file not found: {missing}")):
        build_model(model({"name": "resnet18", "weights": str(missing)}), 3, 32, 10)


class _Payload:
    """Unpickling this creates a directory: code execution, if torch.load allowed it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_a_payload_is_refused_and_never_runs(tmp_path, imagenet_shaped_resnet):
    _, state = imagenet_shaped_resnet
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "extra": _Payload(str(marker))}, evil)
    with pytest.raises(WeightsError) as err:
        build_model(model({"name": "resnet18", "weights": str(evil)}), 3, 32, 10)
    assert not marker.exists()
    # says what is wrong and what a valid file is; never steers to unpickling (PyTorch's own hint)
    assert str(err.value) == (
        f"model.weights: {evil} is not a plain state_dict: it holds a pickled Python object (posix.mkdir), which "
        "is never unpickled; only a plain state_dict is accepted (tensors by parameter name, as written by "
        "torch.save(model.state_dict(), path))"
    )
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


class Holder:
    """A plain class: torch.save of an instance pickles a reference to it."""

    def __init__(self):
        self.weight = torch.zeros(2)


@pytest.mark.parametrize("obj", [Holder(), {"conv1.weight": torch.zeros(1), "holder": Holder()}])
def test_pickled_object_is_refused_naming_its_class_never_how_to_load_it(tmp_path, obj):
    path = tmp_path / "holder.pt"
    torch.save(obj, path)
    with pytest.raises(WeightsError) as err:
        build_model(model({"name": "resnet18", "weights": str(path)}), 3, 32, 10)
    message = str(err.value)
    assert message == (
        f"model.weights: {path} is not a plain state_dict: it holds a pickled Python object "
        f"({Holder.__module__}.Holder), which is never unpickled; only a plain state_dict is accepted "
        "(tensors by parameter name, as written by torch.save(model.state_dict(), path))"
    )
    for advice in ("\x1b", "can still be loaded", "safe_globals", "trust", "weights_only"):
        assert advice not in message


def test_garbage_file_is_refused_without_pytorchs_unpickling_hint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"garbage bytes" * 10)
    with pytest.raises(WeightsError) as err:
        build_model(model({"name": "resnet18", "weights": str(path)}), 3, 32, 10)
    message = str(err.value)
    assert message.startswith(f"model.weights: {path} is not a plain state_dict: it holds pickled data that is not")
    assert "torch.save(model.state_dict(), path)" in message and "\n" not in message
    assert "weights_only" not in message and "likely succeed" not in message


def test_non_state_dict_objects_are_refused(tmp_path):
    for obj in ([torch.zeros(3)], {"model": {"conv1.weight": torch.zeros(1)}, "epoch": 3}):
        path = tmp_path / "odd.pt"
        torch.save(obj, path)
        with pytest.raises(WeightsError, match=re.escape(f"model.weights: {path} is not a state_dict")):
            build_model(model({"name": "resnet18", "weights": str(path)}), 3, 32, 10)


def test_mismatching_state_dict_names_the_keys(tmp_path, imagenet_shaped_resnet):
    _, state = imagenet_shaped_resnet
    wrong_shape = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    path = tmp_path / "shape.pt"
    io.save_torch(path, wrong_shape)
    with pytest.raises(
        WeightsError,
        match=re.escape(
            f"model.weights: {path} does not match the model: shape mismatch (1): conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)"  # noqa: E501
        ),
    ):
        build_model(model({"name": "resnet18", "weights": str(path)}), 3, 32, 10)
    other = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    other["features.0.weight"] = torch.zeros(1)
    io.save_torch(path, other)
    with pytest.raises(
        WeightsError, match=r"missing keys \(\d+\): layer4\.0\.bn1\.bias.*unexpected keys \(1\): features\.0\.weight"
    ):
        build_model(model({"name": "resnet18", "weights": str(path)}), 3, 32, 10)


# ------------------------------------------------------------------ inspection


def test_summary_is_the_seeds_parameter_table():
    net = build_model(model({"batch_norm": True}), 3, 32, 10)
    table = summary(net, 3, 32)
    assert list(table.columns) == ["layer", "type", "output_shape", "params", "trainable", "param_formula"]
    assert table["params"].sum() == count_params(net)[1]
    rows = table.set_index("layer")
    assert rows.loc["conv1"].tolist() == ["Conv2d", "32x32x32", 2432, 2432, "(5*5*3+1)*32"]
    assert rows.loc["bn1"].tolist() == ["BatchNorm2d", "32x32x32", 64, 64, "2*32"]
    assert rows.loc["pool3", "output_shape"] == "128x4x4"
    assert rows.loc["fc1"].tolist() == ["Linear", "64", 131136, 131136, "(2048+1)*64"]
    for formula, params in zip(table["param_formula"], table["params"]):
        assert (eval(formula) if formula else 0) == params
    assert net.training  # summary leaves the mode alone


def test_summary_of_a_frozen_transfer_model_on_gray_input():
    net = build_model(model({"name": "resnet18", "train": "frozen"}), 1, 16, 10)
    table = summary(net, 1, 16)
    assert table["trainable"].sum() == 5130
    assert table.iloc[0].tolist() == ["conv1", "Conv2d", "64x8x8", 9408, 0, "7*7*3*64"]
    assert table.iloc[-1]["layer"] == "fc"


def test_first_conv_and_formula_helpers():
    net = build_model(model({}), 3, 32, 10)
    assert first_conv(net) is net.conv1
    assert param_formula(nn.ReLU()) == ""
    with pytest.raises(ValueError, match="Linear has no Conv2d layer"):
        first_conv(nn.Linear(2, 2))


def test_frozen_backbone_keeps_batch_norm_statistics():
    net = build_model(model({"name": "resnet18", "weights": "none", "train": "frozen"}), 3, 32, 10)
    before = net.bn1.running_mean.clone()
    net.train()
    net(torch.rand(4, 3, 32, 32))
    assert torch.equal(net.bn1.running_mean, before)
    assert not net.bn1.training  # eval mode: normalised with the running statistics, also while training


@pytest.mark.parametrize(
    "keys, head",
    [
        ({"name": "resnet18", "weights": "none", "train": "frozen"}, "fc"),
        ({"name": "resnet18", "weights": "none", "train": "finetune"}, None),
        ({"name": "simple_cnn"}, None),
    ],
)
def test_frozen_head_is_the_head_whose_input_depends_on_the_image_alone(keys, head):
    net = build_model(model(keys), 3, 16, 10)
    assert frozen_head(net, model(keys)) is (net.get_submodule(head) if head else None)
