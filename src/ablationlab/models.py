"""Models named in a recipe, and the parameter table of the report.

``build_model(recipe["model"], in_channels, image_size, num_classes)`` builds, from the ``model``
section of a completed, checked recipe (:func:`ablationlab.recipe.complete`; the builder trusts it):

- ``simple_cnn``: the source reports' baseline. Per block: ``convs_per_block`` × (conv k×k,
  padding k//2 [, BatchNorm2d], activation), then 2×2 max-pool [, dropout]; then
  flatten, ``hidden`` × (Linear [, BatchNorm1d], activation [, dropout]), Linear to
  the classes. Defaults give 390,410 parameters on 3×32×32 / 10 classes.
- ``vgg_style``: the same block builder with batch norm always on (the source reports'
  best hand-made models); give it a VGG shape with e.g. ``widths: [64, 128, 256, 512]``,
  ``kernel_size: 3``, ``convs_per_block: 2``, ``hidden: [512]``, ``dropout``.
- ``resnet18``, ``vgg11_bn``: torchvision models with a new head (``fc`` /
  ``classifier.6``) for ``num_classes``. ``weights``: ``none`` (from scratch),
  ``imagenet`` (torchvision's weights API: downloaded, or read from
  ``$TORCH_HOME/hub/checkpoints``), or a path to a state_dict file. The head is
  always new: head keys in a weights file are ignored, every other key must match.
  ``train: frozen`` leaves only the head trainable. 1-channel images are repeated
  to 3 channels by a forward pre-hook, so state_dict keys stay torchvision's.
  ``init`` applies to the new head only.

Pooling: a block whose feature map is already 1×1 skips its max-pool, so deep
configurations work on small images (e.g. 8×8 digits).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ablationlab import io

if TYPE_CHECKING:
    import pandas as pd

# Tables keyed by the values a model key allows: exactly the schema's values (tests/test_defaults.py).
# model.name: one of our CNNS (value: batch norm always on) or a torchvision model (TRANSFER).
CNNS = {"simple_cnn": False, "vgg_style": True}
TRANSFER = {
    # name: (torchvision.models constructor, its ImageNet weights enum member, head module path)
    "resnet18": ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "fc"),
    "vgg11_bn": ("vgg11_bn", "VGG11_BN_Weights.IMAGENET1K_V1", "classifier.6"),
}
ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
DROPOUT_WHERE = {"head": (False, True), "conv": (True, False), "both": (True, True)}  # (after conv blocks, in head)
TRAIN_MODES = {"finetune": False, "frozen": True}  # the backbone frozen (only the new head learns)?


def _torchvision(name: str) -> tuple[Any, Any, str]:
    """(constructor, ImageNet weights, head path) of a transfer model. torchvision is imported
    here, not with this module: it costs seconds per job, and most jobs train no such model."""
    import torchvision

    constructor, weights, head_path = TRANSFER[name]
    enum, member = weights.split(".")
    return getattr(torchvision.models, constructor), getattr(getattr(torchvision.models, enum), member), head_path


class WeightsError(ValueError):
    """A weights file that is missing, not a plain state_dict, or does not fit the model."""


# --------------------------------------------------------------------------- builders


def build_model(model: Mapping[str, Any], in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build the recipe's model (its completed ``model`` section) for ``in_channels``×``image_size``² inputs
    and ``num_classes``."""
    for key, value in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: must be a positive integer, got {value!r}")
    if model["name"] in TRANSFER:
        return _transfer(model, in_channels, image_size, num_classes)
    net = _cnn(model, in_channels, image_size, num_classes, batch_norm=model["batch_norm"] or CNNS[model["name"]])
    _init(net, model["init"], model["activation"])
    return net


def _activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _cnn(opt: dict, in_channels: int, image_size: int, num_classes: int, *, batch_norm: bool) -> nn.Sequential:
    """Layers named ``conv1`` (``conv1_2`` with several convs per block), ``bn1``, ``act1``,
    ``pool1``, ``drop1``, ..., ``flatten``, ``fc1``, ``bn_fc1``, ``act_fc1``, ``drop_fc1``, ...,
    and the output layer ``fc<len(hidden)+1>`` (the baseline: ``fc1`` 2048→64, ``fc2`` 64→10)."""
    k, act, p = opt["kernel_size"], opt["activation"], float(opt["dropout"])
    conv_dropout, head_dropout = (p > 0 and where for where in DROPOUT_WHERE[opt["dropout_where"]])
    layers: dict[str, nn.Module] = {}
    channels, size = in_channels, image_size  # an odd kernel (the schema's rule) with padding k // 2 keeps the size
    for b, width in enumerate(opt["widths"], 1):
        for c in range(1, opt["convs_per_block"] + 1):
            tag = f"{b}" if opt["convs_per_block"] == 1 else f"{b}_{c}"
            layers[f"conv{tag}"] = nn.Conv2d(channels, width, k, padding=k // 2)
            if batch_norm:
                layers[f"bn{tag}"] = nn.BatchNorm2d(width)
            layers[f"act{tag}"] = _activation(act)
            channels = width
        if size >= 2:
            layers[f"pool{b}"] = nn.MaxPool2d(2)
            size //= 2
        if conv_dropout:
            layers[f"drop{b}"] = nn.Dropout(p)
    layers["flatten"] = nn.Flatten()
    features = channels * size * size
    for i, hidden in enumerate(opt["hidden"], 1):
        layers[f"fc{i}"] = nn.Linear(features, hidden)
        if batch_norm:
            layers[f"bn_fc{i}"] = nn.BatchNorm1d(hidden)
        layers[f"act_fc{i}"] = _activation(act)
        if head_dropout:
            layers[f"drop_fc{i}"] = nn.Dropout(p)
        features = hidden
    layers[f"fc{len(opt['hidden']) + 1}"] = nn.Linear(features, num_classes)
    return nn.Sequential(OrderedDict(layers))


def _gain_name(activation: str) -> str:
    return activation if activation in ("relu", "leaky_relu", "selu", "tanh", "sigmoid") else "relu"


def _kaiming(weight: torch.Tensor, gain_name: str) -> None:
    nn.init.kaiming_normal_(weight, nonlinearity=gain_name if gain_name in ("relu", "leaky_relu") else "relu")


def _xavier(weight: torch.Tensor, gain_name: str) -> None:
    nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(gain_name))


INITS = {"default": None, "kaiming": _kaiming, "xavier": _xavier}  # weight initialiser (None: PyTorch's own)


def _init(module: nn.Module, init: str, activation: str) -> None:
    """Re-initialise every Conv2d/Linear weight of ``module`` as ``init`` says (biases to 0)."""
    initialise = INITS[init]
    if initialise is None:
        return
    gain_name = _gain_name(activation)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            initialise(m.weight, gain_name)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _repeat_gray(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a 1-channel batch becomes 3 identical channels."""
    return (args[0].expand(-1, 3, -1, -1),) + tuple(args[1:])


def _transfer(opt: dict, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    name = opt["name"]
    constructor, imagenet, head_path = _torchvision(name)
    if in_channels not in (1, 3):
        raise ValueError(f"model.name: {name} takes 1- or 3-channel images, the data has {in_channels}")
    if name == "vgg11_bn" and image_size < 32:
        raise ValueError(
            f"model.name: vgg11_bn needs images of at least 32×32, got {image_size}×{image_size} (set input.resize)"
        )
    net = constructor(weights=None)
    parent_path, _, attr = head_path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old_head = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old_head.in_features, num_classes))
    head = getattr(parent, attr)
    _init(head, opt["init"], "relu")

    weights = opt["weights"]
    if weights == "imagenet":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet.url).name
        try:
            state = imagenet.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except Exception as exc:  # no network, a bad cached file, ...
            raise WeightsError(
                f"model.weights: could not load the ImageNet weights of {name} from {cached} "
                f"or {imagenet.url} ({type(exc).__name__}: {_refusal(exc)})"
            ) from None
        _load_backbone(net, state, head_path, str(cached))
    elif weights != "none":
        _load_backbone(net, _read_state_dict(weights), head_path, weights)

    if TRAIN_MODES[opt["train"]]:
        for param in net.parameters():
            param.requires_grad_(False)
        for param in head.parameters():
            param.requires_grad_(True)
        for layer in net.modules():  # a frozen backbone keeps its batch-norm statistics too
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.register_forward_pre_hook(_stay_in_eval)
    if in_channels == 1:
        net.register_forward_pre_hook(_repeat_gray)
    return net


def _stay_in_eval(layer: nn.Module, _inputs) -> None:
    layer.eval()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ACCEPTED = (
    "only a plain state_dict is accepted (tensors by parameter name, as written by "
    "torch.save(model.state_dict(), path))"
)


def _refusal(exc: Exception) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused holds, in our words: PyTorch's own
    text advises loading it unsafely (unpickling runs arbitrary code) and carries colour codes."""
    text = _ANSI.sub("", str(exc))
    if isinstance(exc, pickle.UnpicklingError):
        if found := re.search(r"GLOBAL ([\w.]+)", text):
            return f"it holds a pickled Python object ({found.group(1)}), which is never unpickled"
        return "it holds pickled data that is not tensors, which is never unpickled"
    if isinstance(exc, EOFError):
        return "the file is empty or cut short"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first.split(". ", 1)[0].rstrip(".")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"model.weights: file not found: {path}")
    try:
        state = io.load_torch(file)
    except Exception as exc:
        raise WeightsError(f"model.weights: {path} is not a plain state_dict: {_refusal(exc)}; {_ACCEPTED}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"model.weights: {path} is not a state_dict (a mapping of parameter names to tensors)")
    return dict(state)


def _load_backbone(net: nn.Module, state: Mapping[str, torch.Tensor], head_path: str, source: str) -> None:
    """Load every key of ``state`` except the head's; all other keys must match exactly."""
    prefix = head_path + "."
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(prefix)}
    given = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(k for k in set(own) & set(given) if own[k].shape != given[k].shape)
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            shown = ", ".join(
                f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" if label == "shape mismatch" else k
                for k in keys[:5]
            )
            problems.append(f"{label} ({len(keys)}): {shown}{', ...' if len(keys) > 5 else ''}")
    if problems:
        raise WeightsError(f"model.weights: {source} does not match the model: " + "; ".join(problems))
    net.load_state_dict(given, strict=False)


# --------------------------------------------------------------------------- inspection


def first_conv(module: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of ``module`` (in definition order)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{type(module).__name__} has no Conv2d layer")


def count_params(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters counted once)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def param_formula(module: nn.Module) -> str:
    """How a layer's parameter count is computed, e.g. ``(5*5*3+1)*32`` for a conv."""
    bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        n_in = f"{kh}*{kw}*{module.in_channels // module.groups}"
    elif isinstance(module, nn.Linear):
        n_in = str(module.in_features)
    else:
        n_in = None
    if n_in is not None:
        n_out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        return f"({n_in}+1)*{n_out}" if bias else f"{n_in}*{n_out}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        tensors = len(list(module.parameters(recurse=False)))  # weight and bias when affine
        return f"{tensors}*{module.num_features}" if tensors else ""
    return ""


def summary(module: nn.Module, in_channels: int, image_size: int) -> pd.DataFrame:
    """One row per executed leaf layer: ``layer`` (dotted name), ``type``, ``output_shape``
    (C×H×W or features, without the batch), ``params``, ``trainable``, ``param_formula``.

    Runs one forward pass (torchinfo, eval mode, batch of 2 zeros on the module's device).
    """
    import pandas as pd  # here, not at the top: the train jobs import this module and need no pandas
    import torchinfo

    names = {id(m): name for name, m in module.named_modules()}
    device = next(module.parameters(), torch.empty(0)).device
    x = torch.zeros(2, in_channels, image_size, image_size, device=device)
    stats = torchinfo.summary(module, input_data=x, mode="eval", verbose=0, depth=100)
    rows = []
    for info in stats.summary_list:
        if not info.is_leaf_layer:
            continue
        shape = info.output_size[1:] if isinstance(info.output_size, (list, tuple)) else []
        rows.append(
            {
                "layer": names.get(info.layer_id, info.var_name),
                "type": info.class_name,
                "output_shape": "x".join(str(s) for s in shape),
                "params": sum(p.numel() for p in info.module.parameters(recurse=False)),
                "trainable": sum(p.numel() for p in info.module.parameters(recurse=False) if p.requires_grad),
                "param_formula": param_formula(info.module),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params", "trainable", "param_formula"])


def frozen_head(net: nn.Module, model: Mapping[str, Any]) -> nn.Module | None:
    """The new head of a ``train: frozen`` transfer network (``model``: its recipe section) whose frozen part
    computes the same in training as in evaluation, so that the head's input depends on the image alone:
    batch norm stays in eval mode (:func:`_transfer`) and there is no dropout (vgg11_bn's classifier has
    some, resnet18 none). None for any other network."""
    if model["name"] not in TRANSFER or not TRAIN_MODES[model["train"]]:
        return None
    if any(isinstance(layer, nn.modules.dropout._DropoutNd) for layer in net.modules()):
        return None
    return net.get_submodule(TRANSFER[model["name"]][2])
