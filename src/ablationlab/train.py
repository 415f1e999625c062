"""Stage ``train``: the runs of one experiment (one recipe, one run per seed), resumable and bit-reproducible.

The loop is deliberately plain (nanoGPT style). The whole dataset lives as one uint8
tensor on the training device, moved there once per process; every epoch draws a seeded
``randperm`` and batches are index slices of it. A batch goes through
:class:`ablationlab.runtime.Preprocess` (float in [0, 1], augmented per image on the
device, resized, standardized), then through :func:`train_step`. The validation split
is evaluated after every epoch, without augmentation. What an epoch does, for one run or
several, is the loop of :func:`train_epochs`; the ``train`` command reaches the step in three
calls (:func:`cli` → :func:`train_runs` → :func:`train_epochs` → ``Run.step``: :func:`eager_step`
or its CUDA graph replay). Where only the head of a frozen network learns and nothing is
augmented, the frozen part's output is computed once per split and the epochs train the head
on it (:func:`frozen_features`: the same results, bit for bit on the CPU). What a trained model needs to run
(network, preprocessing, loss, inference) lives in :mod:`ablationlab.runtime`; this module
is the loop, its optimizer and scheduler, determinism and checkpoints.

One process trains several runs (:func:`train_runs`: the seeds of an experiment): one
interpreter start, one data load, one CUDA context. On the CPU they train one after the
other, each exactly as it would alone. On CUDA they train together: their steps are
interleaved, each run on its own CUDA stream, and each step is one CUDA graph replay
(:mod:`ablationlab.cuda_graph`) where the recipe allows, so the GPU runs them at once
instead of waiting for Python. Runs trained together on the CPU (``together=True``) keep
their own RNG states, so they are bit-identical to runs trained alone (tested); on CUDA they
share the device's generator (CUDA runs are not bit-reproducible anyway: cuDNN autotuning).

By default (``drop_last: true``) an epoch trains on full batches only: the images left over
after the last full batch are not trained on in that epoch (each epoch's fresh shuffle gives
every image the same chance). On real CIFAR-10 a partial last batch of 8 images, one noisy
step right before every validation and the test evaluation, cost 5–17 pp and multiplied
the seed spread by 10. ``drop_last: false`` trains on it too (a single left-over
image is still dropped: batch norm cannot train on a batch of one).

After every epoch ``{checkpoint_dir}/last.pt`` is written atomically with everything
needed to continue: model, optimizer, scheduler, grad scaler, early-stopping state,
history, best weights (the fields of :class:`LoopState`) and every RNG state (torch CPU
and CUDA, numpy, python). A run started again with the same recipe, seed and data
resumes from it and, on the CPU, produces bit-identical history (except the timing
columns) and weights to a run that was never interrupted. A checkpoint of another
recipe/seed/data is ignored. The weights in it leave out what still holds the initial
weights (a frozen backbone: :func:`without_init`), taken back from ``weights_init.pt`` next
to it (checked by its sha256).

A non-finite loss ends the run with status ``diverged`` (a result, not a crash): the
outputs are still written, with the weights of the last finite epoch (or the initial
ones). Statuses: ``finished``, ``early_stopped``, ``diverged``.

Outputs in each run's ``out_dir`` (``docs/contracts.md``): ``recipe.json``, ``history.csv``,
``weights_init.pt``, ``weights.pt`` (the run's result: the last epoch's weights, or the best
epoch's when early stopping restores them), ``weights_best.pt`` (the best validation epoch's,
always) and, written last, ``train.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data, defaults, evaluate, io, models
from . import device as devices
from .cuda_graph import CapturedStep, not_capturable
from .recipe import complete
from .runtime import Preprocess, build_network, make_loss, predict
from .schema import check_recipe

log = logging.getLogger("ablationlab.train")

OPTIMIZERS = defaults.allowed("optimizer.name")  # make_optimizer builds each (tests/test_defaults.py)
SCHEDULERS = defaults.allowed("scheduler.name")  # make_scheduler builds each
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]
TIMING_COLUMNS = ("seconds", "images_per_s")
# 2: the best epoch's weights are kept whether or not early stopping restores them; 3: ``model`` and
# ``best_state`` hold None for each entry with the bits of weights_init.pt (its sha256: ``init_sha256``)
CHECKPOINT_VERSION = 3


# --------------------------------------------------------------------------- recipe


def _names(choices) -> str:
    return ", ".join(choices)


def validate(recipe: Mapping[str, Any], n_train: int | None = None) -> None:
    """Raise ``ValueError`` naming the key path of the first bad setting in the completed ``recipe``.

    The schema's recipe definition (:func:`ablationlab.schema.check_recipe`: names, types, bounds,
    unknown keys), then what it cannot express: ``n_train`` (the size of the training split), when
    given, bounds ``batch_size``. The model and augmentation builders in :func:`setup` add their own
    shape rules, before anything is written.
    """
    check_recipe(recipe)
    if n_train is not None and recipe["batch_size"] > n_train:
        raise ValueError(f"batch_size: {recipe['batch_size']} is larger than the training split ({n_train} images)")


def make_optimizer(params, opt: Mapping[str, Any], *, capturable: bool = False) -> torch.optim.Optimizer:
    """The optimizer of the recipe's ``optimizer`` section over ``params``; ``capturable`` keeps the step
    counters of Adam, AdamW and RMSprop on the device (for a CUDA-graph step)."""
    name, lr, wd, momentum = opt["name"], opt["lr"], opt["weight_decay"], opt["momentum"]
    graph = {"capturable": True} if capturable else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(opt["nesterov"]), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **graph)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **graph)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=wd, **graph)
    raise ValueError(f"optimizer.name: unknown optimizer {name!r} (choose from {_names(OPTIMIZERS)})")


def make_scheduler(optimizer, sched: Mapping[str, Any], *, lr: float, epochs: int, steps_per_epoch: int):
    """The LR scheduler of the recipe's ``scheduler`` section (None for ``none``)."""
    name = sched["name"]
    if name == "none":
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=sched["step_size"], gamma=sched["gamma"])
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=sched["gamma"], patience=sched["patience"])
    raise ValueError(f"scheduler.name: unknown scheduler {name!r} (choose from {_names(SCHEDULERS)})")


def recipe_key(recipe: Mapping[str, Any], seed: int, meta: Mapping[str, Any]) -> str:
    """What a checkpoint must match to be resumed: the canonical recipe, the seed and the digest of the
    data training reads (train and val splits: new test images re-evaluate a run without re-training it)."""
    text = io.canonical_json({"recipe": recipe, "seed": seed, "data": data.data_digest(meta, ("train", "val"))})
    return hashlib.sha256(text.encode()).hexdigest()


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Optimizer steps per epoch over ``n`` images: full batches only with ``drop_last``; else also the
    partial last batch, unless it is a single image."""
    return n // batch_size + (0 if drop_last or n % batch_size <= 1 else 1)


def partial_batch(n: int, batch_size: int, drop_last: bool) -> int:
    """Images in each epoch's partial last step (0: every step sees ``batch_size`` images)."""
    return n % batch_size if steps_per_epoch(n, batch_size, drop_last) * batch_size > n else 0


# --------------------------------------------------------------------------- the step


@dataclass
class Engine:
    """Everything one training step needs. ``model`` owns the weights; ``net`` is what runs (maybe compiled,
    or only the head of a frozen network: :func:`frozen_features`). ``loss_sum`` and ``correct`` accumulate
    the epoch on the device; ``eager_reason`` says why the step cannot be a CUDA graph (None: it can)."""

    model: nn.Module
    net: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    preprocess: Callable[..., torch.Tensor]
    scaler: torch.amp.GradScaler
    device: torch.device
    batch_size: int
    drop_last: bool
    loss_sum: torch.Tensor
    correct: torch.Tensor
    step_scheduler_per_batch: bool = False
    eager_reason: str | None = None


def setup(
    recipe: Mapping[str, Any],
    meta: Mapping[str, Any],
    n_train: int,
    device: torch.device,
    *,
    compile: bool = False,
) -> Engine:
    """Build model, optimizer, scheduler, loss and preprocessing for ``recipe`` on ``device``; where the recipe
    and device allow it (``eager_reason`` None) the step becomes a CUDA graph (:func:`make_step`)."""
    model = build_network(recipe, meta).to(device=device, memory_format=devices.memory_format(device))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no trainable parameters (model.train: frozen left nothing to learn)")
    scaler = devices.grad_scaler(device)
    reason = not_capturable(recipe, device, scaled=scaler.is_enabled(), compiled=compile)
    if not compile:
        devices.optimizers_without_dynamo()
    optimizer = make_optimizer(params, recipe["optimizer"], capturable=reason is None)
    steps = steps_per_epoch(n_train, recipe["batch_size"], recipe["drop_last"])
    scheduler = make_scheduler(
        optimizer, recipe["scheduler"], lr=recipe["optimizer"]["lr"], epochs=recipe["epochs"], steps_per_epoch=steps
    )
    net = model
    if compile:
        if device.type == "cuda":
            net = torch.compile(model)
        else:
            log.info("--compile is used on CUDA only; running eagerly on %s", device.type)
    return Engine(
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=make_loss(recipe["loss"], meta["num_classes"]),
        preprocess=Preprocess(meta, recipe, device),
        scaler=scaler,
        device=device,
        batch_size=recipe["batch_size"],
        drop_last=recipe["drop_last"],
        loss_sum=torch.zeros((), device=device),
        correct=torch.zeros((), dtype=torch.long, device=device),
        step_scheduler_per_batch=recipe["scheduler"]["name"] == "onecycle",
        eager_reason=reason,
    )


def train_step(engine: Engine, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimizer step on one ready batch; returns (summed loss, #correct) as device tensors."""
    with devices.autocast(engine.device):
        logits = engine.net(inputs)
        loss = engine.loss_fn(logits, targets)
    engine.optimizer.zero_grad(set_to_none=True)
    engine.scaler.scale(loss).backward()
    engine.scaler.step(engine.optimizer)
    engine.scaler.update()
    if engine.step_scheduler_per_batch:
        engine.scheduler.step()
    n = targets.shape[0]
    return loss.detach().float() * n, (logits.detach().argmax(dim=1) == targets).sum()


def eager_step(engine: Engine, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
    """One training step on the images ``x[idx]`` (preprocessed, augmented), added to the engine's sums."""
    batch_loss, batch_correct = train_step(engine, engine.preprocess(x[idx], train=True), y[idx])
    engine.loss_sum += batch_loss
    engine.correct += batch_correct


def make_step(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """``step(idx)``: one training step on ``x[idx]``, ``y[idx]`` (data on the device). :func:`eager_step`, or
    its CUDA graph replay (:class:`ablationlab.cuda_graph.CapturedStep`) where ``engine.eager_reason`` is None."""
    eager = functools.partial(eager_step, engine, x, y)
    if engine.eager_reason is not None:
        return eager
    return CapturedStep(eager, engine.model, engine.optimizer, [engine.loss_sum, engine.correct], engine.batch_size)


def ready(x: torch.Tensor, train: bool = False) -> torch.Tensor:
    """The preprocessing of inputs that are ready already (the features of :func:`frozen_features`)."""
    return x


def frozen_features(
    engine: Engine, recipe: Mapping[str, Any], x_train: torch.Tensor, x_val: torch.Tensor
) -> tuple[Engine, torch.Tensor, torch.Tensor]:
    """What the head of a frozen network sees, computed once: ``(engine, train inputs, val inputs)``.

    Where only the head learns, the frozen part computes the same in training as in evaluation
    (:func:`ablationlab.models.frozen_head`: batch norm in eval mode, no dropout) and the input
    pipeline has no augmentation, the head's inputs depend on the image alone: they are computed
    once per split (in :func:`ablationlab.runtime.predict`'s batches) and each epoch trains and
    validates the head on them (an engine whose ``net`` is the head, inputs ``ready``). The head
    then runs on the same tensors as in the whole network: on the CPU the results are bit-identical
    (tests/test_train.py). Any other recipe: the engine and the images, unchanged.
    """
    head = models.frozen_head(engine.model, recipe["model"])
    if head is None or recipe["augment"]:
        return engine, x_train, x_val
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        engine.model.eval()
        features = []
        for x in (x_train, x_val):
            predict(engine.model, engine.preprocess, x, engine.device)
            features.append(torch.cat(seen))
            seen.clear()
    finally:
        hook.remove()
    log.info("frozen backbone without augmentation: its features computed once, only the head trains on them")
    return replace(engine, net=head, preprocess=ready), features[0], features[1]


def validate_epoch(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy of the model (eval mode, no augmentation) on ``x``/``y``."""
    engine.model.eval()
    logits = predict(engine.net, engine.preprocess, x, engine.device)
    return {"val_loss": engine.loss_fn(logits, y).item(), "val_acc": (logits.argmax(dim=1) == y).float().mean().item()}


# --------------------------------------------------------------------------- determinism, checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def configure_determinism(device: torch.device) -> None:
    """Deterministic kernels where that is cheap (CPU, MPS); cuDNN autotuning on CUDA (fast, not bit-exact)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif hasattr(torch._C, "_set_deterministic_algorithms"):
        # torch.use_deterministic_algorithms without its import of torch._inductor.config (which
        # pulls in torch._dynamo and sympy: ~1.5 s per job); inductor only runs for --compile, on CUDA
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a randperm from its own generator (independent of other RNG use)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def rng_state(*, accelerators: bool = True) -> dict[str, Any]:
    """Every RNG's state (torch CPU, numpy, python and, with ``accelerators``, CUDA and MPS)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if accelerators and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if accelerators and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state_dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (on one device) hold the same bits: dtype, shape and bytes (0.0 is not -0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    word = _WORDS.get(a.element_size(), torch.uint8)  # an integer view compares the bits, and fast
    try:
        return torch.equal(a.reshape(-1).view(word), b.reshape(-1).view(word))
    except RuntimeError:  # a dtype without an integer view: never taken for unchanged
        return False


_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two CPU state_dicts would save to the same bytes: the same keys in the same order, each
    tensor with the same bits and strides."""
    return list(a) == list(b) and all(same_bits(a[k], b[k]) and a[k].stride() == b[k].stride() for k in a)


def without_init(state: Mapping[str, torch.Tensor], init: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``state`` for ``last.pt``: on the CPU, None in place of every entry that holds the bits of ``init``
    (the initial weights, in ``weights_init.pt``). A frozen backbone never changes: its tensors (45 MB for
    ResNet-18) are not written again after every epoch. :func:`with_init` puts them back, bit for bit."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = None if k in init and same_bits(v, init[k]) else v
    return out


def with_init(saved: Mapping[str, Any], init: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict that :func:`without_init` saved as ``saved``, in its order."""
    return {k: init[k] if v is None else v for k, v in saved.items()}


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at ``path`` if it exists and belongs to this recipe/seed/data, else None."""
    if not path.exists():
        return None
    try:
        ckpt = io.load_torch(path)
    except Exception as exc:  # a truncated or foreign file: start over rather than crash
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("key") != key:
        log.warning("ignoring checkpoint %s: it belongs to another recipe, seed or dataset", path)
        return None
    return ckpt


# --------------------------------------------------------------------------- one run


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next; its fields are keys of ``last.pt``."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None  # best value of early_stopping.monitor so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights (weights_best.pt)
    status: str | None = None  # None while training, then finished / early_stopped / diverged
    stop_reason: str | None = None
    message: str | None = None
    wall_seconds: float = 0.0

    def as_checkpoint(self) -> dict[str, Any]:
        """The fields by name, not copied (``dataclasses.asdict`` would deep-copy the best weights)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> LoopState:
        return cls(**{f.name: ckpt[f.name] for f in fields(cls)})


def _read_init(path: Path, sha256: str) -> dict[str, torch.Tensor] | None:
    """The initial weights at ``path`` if its bytes are those a checkpoint was saved with (``sha256``), else None."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("ignoring the checkpoint next to %s: cannot read the initial weights (%s)", path, exc)
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("ignoring the checkpoint next to %s: not the initial weights it was saved with", path)
        return None
    return io.load_torch(data)


def _start(
    engine: Engine, ckpt_path: Path, init_path: Path, key: str
) -> tuple[LoopState, dict[str, torch.Tensor], str]:
    """``(loop state, initial weights, their file's sha256)`` to begin with: restored from the checkpoint of this
    key (engine and RNGs too) and the ``init_path`` it was saved with, or a fresh state, the engine's initial
    weights then saved to ``init_path``."""
    ckpt = load_checkpoint(ckpt_path, key)
    init = _read_init(init_path, ckpt["init_sha256"]) if ckpt is not None else None
    if ckpt is None or init is None:
        init = cpu_state(engine.model)
        return LoopState(), init, io.save_torch(init_path, init)
    engine.model.load_state_dict(with_init(ckpt["model"], init))
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    if engine.scheduler is not None:
        engine.scheduler.load_state_dict(ckpt["scheduler"])
    engine.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = LoopState.from_checkpoint(ckpt)
    if state.best_state is not None:
        state.best_state = with_init(state.best_state, init)
    log.info("resuming from epoch %d (checkpoint %s)", state.epoch, ckpt_path)
    return state, init, ckpt["init_sha256"]


def _save_checkpoint(
    path: Path, key: str, seed: int, state: LoopState, engine: Engine, init: Mapping[str, torch.Tensor], init_sha: str
) -> None:
    """``last.pt``; the weights without the entries that still hold the initial ones (:func:`without_init`)."""
    best = state.best_state
    io.save_torch(
        path,
        digest=False,
        obj={
            "version": CHECKPOINT_VERSION,
            "key": key,
            "seed": seed,
            **state.as_checkpoint(),
            "best_state": without_init(best, init) if best is not None else None,
            "init_sha256": init_sha,
            "model": without_init(engine.model.state_dict(), init),
            "optimizer": engine.optimizer.state_dict(),
            "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None,
            "scaler": engine.scaler.state_dict(),
            "rng": rng_state(),
        },
    )


def _is_better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if monitor == "val_loss" else value > best + min_delta


def _end_of_epoch(
    state: LoopState, row: dict[str, float], engine: Engine, es: Mapping[str, Any], last_finite: dict[str, Any]
) -> None:
    """After epoch ``row``: stop on a non-finite loss (back to the ``last_finite`` weights), else keep the best
    epoch's weights, step an epoch scheduler and stop early when ``es`` (early_stopping) says so."""
    epoch, monitor = row["epoch"], es["monitor"]
    if not (math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])):
        which = "train" if not math.isfinite(row["train_loss"]) else "validation"
        engine.model.load_state_dict(last_finite)
        state.status, state.stop_reason = "diverged", "non_finite_loss"
        state.message = (
            f"non-finite {which} loss in epoch {epoch} (learning rate {row['lr']:g} too high?); "
            f"kept the weights of {'epoch ' + str(epoch - 1) if epoch > 1 else 'initialisation'}"
        )
        log.warning("diverged: %s", state.message)
        return
    if _is_better(row[monitor], state.best, monitor, es["min_delta"]):
        state.best, state.best_epoch, state.bad_epochs = row[monitor], epoch, 0
        state.best_state = cpu_state(engine.model)
    else:
        state.bad_epochs += 1
    if engine.scheduler is not None and not engine.step_scheduler_per_batch:
        if isinstance(engine.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            engine.scheduler.step(row["val_loss"])
        else:
            engine.scheduler.step()
    if es["enabled"] and state.bad_epochs >= es["patience"]:
        state.status, state.stop_reason = "early_stopped", "early_stopping"
        state.message = (
            f"{monitor} did not improve by more than {es['min_delta']:g} for "
            f"{es['patience']} epochs; best epoch {state.best_epoch}"
        )
        log.info("early stopping: %s", state.message)


def _progress(epoch: int, epochs: int, total: int):
    """A tqdm bar for the epoch when stderr is a terminal, else None (one log line per epoch instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, file=sys.stderr)


def _log_epoch(row: dict[str, float], epochs: int, bar, seed: int) -> None:
    """One line per epoch: on the progress bar when there is one (then closed), else in the log."""
    summary = (
        f"seed {seed} epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} "
        f"train_acc {row['train_acc']:.4f} val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
        f"lr {row['lr']:.3g} {row['seconds']:.1f}s {row['images_per_s']:.0f} img/s"
    )
    if bar is not None:
        bar.set_postfix_str(summary.split(" ", 4)[4])
        bar.close()
    else:
        log.info(summary)


def _load_splits(data_dir: str | os.PathLike, n_train: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val) on ``dev``, sha256-checked against meta.json."""
    x_train, y_train = data.load_split(data_dir, "train")
    x_val, y_val = data.load_split(data_dir, "val")
    if len(y_train) != n_train:
        raise data.DataError(f"{data_dir}: meta.json says {n_train} training images, train_y.pt has {len(y_train)}")
    return tuple(t.to(dev) for t in (x_train, y_train, x_val, y_val))


def _finish(state: LoopState, model: nn.Module, epochs: int, es: Mapping[str, Any]) -> str:
    """After the loop: a run still going has ``finished``. Returns which weights ``model`` holds as the run's
    result: the best epoch's when early stopping restores them (``restore_best``, put back here), else the
    last epoch's (for a diverged run: its last finite epoch's)."""
    if state.status is None:
        state.status, state.stop_reason, state.message = "finished", "epochs", f"completed {epochs} epochs"
    if state.status == "diverged" or state.best_state is None or not (es["enabled"] and es["restore_best"]):
        return "last"
    model.load_state_dict(state.best_state)
    return "best"


@dataclass
class Shared:
    """What the runs of one process share: the completed recipe, the data on the device and the options."""

    recipe: dict[str, Any]
    meta: dict[str, Any]
    device: torch.device
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    compile: bool = False
    stop_after: int | None = None
    progress: bool = True
    swap_rng: bool = False  # runs interleaved on the CPU: each run's RNG states swapped in for its turns


@dataclass
class Epoch:
    """One run's epoch in progress: its number, shuffled order, learning rate, the weights to fall back to
    when it diverges, its progress bar (or None) and its start time."""

    number: int
    order: torch.Tensor
    batch_size: int
    lr: float
    last_finite: dict[str, torch.Tensor]
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def batch(self, i: int) -> torch.Tensor:
        """The indices of step ``i``; advances the progress bar."""
        if self.bar is not None:
            self.bar.update()
        return self.order[i * self.batch_size : (i + 1) * self.batch_size]

    def row(self, train: Mapping[str, float], val: Mapping[str, float]) -> dict[str, float]:
        """The epoch's ``history.csv`` row (``HISTORY_COLUMNS``) from what training and validation measured."""
        row = {"epoch": self.number, **{k: train[k] for k in ("train_loss", "train_acc")}, **val}
        row.update(lr=self.lr, seconds=time.perf_counter() - self.started, images_per_s=train["images_per_s"])
        return row


class Run:
    """One seed of the experiment: its engine, step, loop state and files, built (and resumed from its
    checkpoint) at construction; :func:`train_epochs` drives it. ``turn()`` is the context of everything
    it does: its RNG states (swapped in and out when runs interleave on the CPU) and, on CUDA, its stream."""

    def __init__(
        self,
        seed: int,
        out_dir: str | os.PathLike,
        checkpoint_dir: str | os.PathLike,
        shared: Shared,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ):
        sh = shared
        self.clock = time.perf_counter()
        self.seed, self.out_dir, self.shared = seed, Path(out_dir), sh
        self.on_epoch = on_epoch or (lambda row: None)
        self.epochs, self.es = sh.recipe["epochs"], sh.recipe["early_stopping"]
        self.ckpt_path, self.init_path = Path(checkpoint_dir) / "last.pt", Path(checkpoint_dir) / "weights_init.pt"
        self.key = recipe_key(sh.recipe, seed, sh.meta)
        self.stream = torch.cuda.Stream(sh.device) if sh.device.type == "cuda" else None
        self.rng: dict[str, Any] | None = None
        with self.turn():  # seeded, built (bad model/augment settings fail here), resumed
            seed_everything(seed)
            engine = setup(sh.recipe, sh.meta, len(sh.y_train), sh.device, compile=sh.compile)
            self.state, self.init, self.init_sha = _start(engine, self.ckpt_path, self.init_path, self.key)
            self.engine, self.x_train, self.x_val = frozen_features(engine, sh.recipe, sh.x_train, sh.x_val)
            self.step = make_step(self.engine, self.x_train, sh.y_train)
        self.rng = rng_state(accelerators=False) if sh.swap_rng else None
        self.wall_before = self.state.wall_seconds
        self.steps = steps_per_epoch(len(sh.y_train), self.engine.batch_size, self.engine.drop_last)
        self.seen = min(self.steps * self.engine.batch_size, len(sh.y_train))  # images trained on per epoch
        self.stopped = False
        self.result: dict[str, Any] | None = None
        self._log_start()

    @contextlib.contextmanager
    def turn(self):
        if self.rng is not None:
            set_rng_state(self.rng)
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            yield
        if self.rng is not None:
            self.rng = rng_state(accelerators=False)

    def wants_epoch(self) -> bool:
        """Whether another epoch is due: not once finished, stopped early, diverged or at ``stop_after``."""
        if self.state.status is not None or self.state.epoch >= self.epochs:
            return False
        stop_after = self.shared.stop_after
        if stop_after is not None and self.state.epoch >= stop_after:
            if not self.stopped:
                log.info("seed %d: stopping after epoch %d as asked (--stop-after)", self.seed, self.state.epoch)
            self.stopped = True
            return False
        return True

    def begin_epoch(self) -> Epoch:
        """The next epoch: training mode, zeroed sums, a fresh shuffle."""
        engine, number = self.engine, self.state.epoch + 1
        engine.model.train()
        engine.loss_sum.zero_()
        engine.correct.zero_()
        return Epoch(
            number=number,
            order=epoch_order(len(self.shared.y_train), self.seed, number, self.shared.device),
            batch_size=engine.batch_size,
            lr=engine.optimizer.param_groups[0]["lr"],
            last_finite=cpu_state(engine.model),
            bar=_progress(number, self.epochs, self.steps) if self.shared.progress else None,
        )

    def train_metrics(self, epoch: Epoch) -> dict[str, float]:
        """The epoch's training loss, accuracy and images/s (one device sync)."""
        loss, correct = self.engine.loss_sum.item(), self.engine.correct.item()
        return {
            "train_loss": loss / self.seen,
            "train_acc": correct / self.seen,
            "images_per_s": self.seen / (time.perf_counter() - epoch.started),
        }

    def validate(self) -> dict[str, float]:
        return validate_epoch(self.engine, self.x_val, self.shared.y_val)

    def judge(self, row: dict[str, float], last_finite: dict[str, torch.Tensor]) -> None:
        """Divergence, best epoch, epoch scheduler and early stopping after ``row`` (:func:`_end_of_epoch`)."""
        _end_of_epoch(self.state, row, self.engine, self.es, last_finite)

    def checkpoint(self) -> None:
        """``last.pt``, atomically: everything needed to continue after this epoch."""
        self.state.wall_seconds = self.wall_before + time.perf_counter() - self.clock
        _save_checkpoint(self.ckpt_path, self.key, self.seed, self.state, self.engine, self.init, self.init_sha)

    def log_epoch(self, row: dict[str, float], epoch: Epoch) -> None:
        _log_epoch(row, self.epochs, epoch.bar, self.seed)

    def finish(self) -> None:
        """Write the run's files (``train.json`` last) and let go of its engine; ``result`` is train.json's
        content, or ``{"status": "stopped", ...}`` at ``stop_after`` (checkpoint left, nothing written)."""
        state, engine = self.state, self.engine
        if self.stopped:
            self.result = {"status": "stopped", "epochs_run": state.epoch}
        else:
            weights = _finish(state, engine.model, self.epochs, self.es)
            wall = self.wall_before + time.perf_counter() - self.clock
            self.result = self._result(weights, wall)
            self._write_outputs()
        self.engine = self.step = self.init = None  # frees the model, optimizer and captured graph (GPU memory)

    def _captured(self) -> bool:
        return isinstance(self.step, CapturedStep) and self.step.failed is None

    def _log_start(self) -> None:
        sh = self.shared
        log.info(
            "training %s on %s (%d train / %d val images, %d steps of %d per epoch%s), seed %d, device %s, "
            "%d trainable parameters, %s",
            sh.recipe["model"]["name"],
            sh.meta.get("dataset", "?"),
            len(sh.y_train),
            len(sh.y_val),
            self.steps,
            self.engine.batch_size,
            self._partial_text(),
            self.seed,
            devices.describe(sh.device),
            models.count_params(self.engine.model)[0],
            "CUDA-graph steps" if self._captured() else f"eager steps ({self.engine.eager_reason})",
        )

    def _partial_text(self) -> str:
        n, bs, drop = len(self.shared.y_train), self.engine.batch_size, self.engine.drop_last
        if partial := partial_batch(n, bs, drop):
            return f", the last of {partial} images"
        return f"; {n % bs} left-over images dropped per epoch" if n % bs else ""

    def _result(self, weights: str, wall_seconds: float) -> dict[str, Any]:
        """The content of ``train.json``."""
        state, model, n = self.state, self.engine.model, len(self.shared.y_train)
        best = state.history[state.best_epoch - 1] if state.best_epoch else None
        trainable, total = models.count_params(model)
        return {
            "status": state.status,
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch or None,
            "best_val_loss": best["val_loss"] if best else None,
            "best_val_acc": best["val_acc"] if best else None,
            "weights": weights,
            "stop_reason": state.stop_reason,
            "message": state.message,
            "params": trainable,
            "params_total": total,
            "train_images": n,
            "val_images": len(self.shared.y_val),
            "steps_per_epoch": self.steps,
            "partial_batch": partial_batch(n, self.engine.batch_size, self.engine.drop_last),
            "cuda_graph": self._captured(),
            "device": devices.describe(self.shared.device),
            "torch_version": torch.__version__,
            "wall_seconds": wall_seconds,
            "seed": self.seed,
        }

    def _write_outputs(self) -> None:
        """The run files (``docs/contracts.md``), ``train.json`` last."""
        out, state, model = self.out_dir, self.state, self.engine.model
        io.write_json(out / "recipe.json", self.shared.recipe)
        io.write_table(out / "history.csv", {c: [row.get(c) for row in state.history] for c in HISTORY_COLUMNS})
        io.copy_file(self.init_path, out / "weights_init.pt")  # its bytes checked at a resume (init_sha256)
        final = cpu_state(model)
        data = io.torch_bytes(final)
        io.write_bytes(out / "weights.pt", data, digest=False)
        best = state.best_state
        # the best epoch's weights are often the final ones (the last epoch was the best): serialised once
        same = best is None or same_state(best, final)
        io.write_bytes(out / "weights_best.pt", data if same else io.torch_bytes(best), digest=False)
        io.write_json(out / "train.json", self.result)
        log.info(
            "seed %d %s after %d epochs: %s (best epoch %s, %s weights kept); wrote %s",
            self.seed,
            self.result["status"],
            self.result["epochs_run"],
            self.result["message"],
            self.result["best_epoch"],
            self.result["weights"],
            out,
        )


# --------------------------------------------------------------------------- the epoch


def train_epochs(runs: Sequence[Run]) -> None:
    """Train ``runs`` (one, or several at once) epoch by epoch until each is done, then write its files.

    Several runs interleave their steps (on CUDA each on its own stream, so the GPU works on all of
    them at once); on the CPU each run's RNG states are swapped in for its turns, so that interleaving
    changes no run. Runs trained together have the same number of steps per epoch.
    """
    active = list(runs)
    while active:
        for run in [run for run in active if not run.wants_epoch()]:
            with run.turn():
                run.finish()  # weights.pt (best or last), history.csv, ..., train.json last
        active = [run for run in active if run.result is None]
        epochs = []
        for run in active:
            with run.turn():
                epochs.append(run.begin_epoch())  # train mode, zeroed sums, a fresh shuffle
        for i in range(active[0].steps if active else 0):
            for run, epoch in zip(active, epochs):
                with run.turn():
                    run.step(epoch.batch(i))  # eager_step, or its CUDA graph replay
        for run, epoch in zip(active, epochs):
            with run.turn():
                row = epoch.row(run.train_metrics(epoch), run.validate())
                run.log_epoch(row, epoch)
                run.state.history.append(row)
                run.state.epoch = epoch.number
                run.judge(row, epoch.last_finite)  # divergence, best epoch, epoch scheduler, early stopping
                run.checkpoint()  # last.pt: weights, optimizer, RNGs, loop state
                run.on_epoch(row)  # live MLflow logging


def train_runs(
    data_dir: str | os.PathLike,
    recipe: Mapping[str, Any],
    runs: Sequence[tuple[int, str | os.PathLike, str | os.PathLike]],
    *,
    device: str = "auto",
    threads: int | None = None,
    stop_after: int | None = None,
    compile: bool = False,
    together: bool | None = None,
    on_epoch: Mapping[int, Callable[[dict[str, Any]], None] | None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``recipe`` on the prepared data in ``data_dir`` once per ``(seed, out_dir, checkpoint_dir)`` of
    ``runs``, in this process; each run writes its files to its ``out_dir``.

    ``together`` (default: on CUDA only) trains the runs at once, steps interleaved; else one after another.
    Each run resumes from ``{checkpoint_dir}/last.pt`` when it belongs to the same recipe, seed and data.
    ``stop_after=k`` stops each run once k epochs are done (checkpoint left, no outputs written; its result
    is ``{"status": "stopped", "epochs_run": k}``): used to test resuming. ``on_epoch[seed](row)`` is called
    with each epoch's history row once it is checkpointed (live MLflow logging:
    :func:`ablationlab.live_mlflow.live_run`). Returns the content of each run's ``train.json``, in order.
    """
    recipe = complete(recipe)
    dev = devices.pick(device)
    if threads:
        torch.set_num_threads(int(threads))
    meta = data.load_meta(data_dir)
    n_train = meta["splits"]["train"]
    validate(recipe, n_train)
    seeds = [seed for seed, _, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {seeds} repeats a seed")
    configure_determinism(dev)
    together = (dev.type == "cuda" if together is None else together) and len(runs) > 1
    x_train, y_train, x_val, y_val = _load_splits(data_dir, n_train, dev)
    shared = Shared(
        recipe=recipe,
        meta=meta,
        device=dev,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        compile=compile,
        stop_after=stop_after,
        progress=not together,  # one bar per run would interleave
        # on a GPU the steps draw from the device's generator and the host's RNGs are not used while
        # training: no swap (it would cost more than a CUDA-graph step)
        swap_rng=together and dev.type == "cpu",
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # the data is on the device before the runs' streams read it
    hooks = on_epoch or {}
    if together:
        group = [Run(seed, out, ckpt, shared, hooks.get(seed)) for seed, out, ckpt in runs]
        train_epochs(group)
        return [run.result for run in group]
    results = []
    for seed, out, ckpt in runs:  # one at a time: a run's engine is built once the previous one is let go
        run = Run(seed, out, ckpt, shared, hooks.get(seed))
        train_epochs([run])
        results.append(run.result)
    return results


def train(
    data_dir: str | os.PathLike,
    recipe: Mapping[str, Any],
    seed: int,
    out_dir: str | os.PathLike,
    *,
    checkpoint_dir: str | os.PathLike,
    device: str = "auto",
    threads: int | None = None,
    stop_after: int | None = None,
    compile: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One run: :func:`train_runs` for the single ``(seed, out_dir, checkpoint_dir)``; returns its train.json."""
    return train_runs(
        data_dir,
        recipe,
        [(seed, out_dir, checkpoint_dir)],
        device=device,
        threads=threads,
        stop_after=stop_after,
        compile=compile,
        on_epoch={seed: on_epoch},
    )[0]


# --------------------------------------------------------------------------- CLI


def load_recipe(text: str) -> dict[str, Any]:
    """A recipe from inline JSON or from a JSON file path."""
    stripped = text.strip()
    with io.json_errors("--recipe", missing=f"no such file {text!r} (give a JSON file or an inline JSON object)"):
        recipe = json.loads(stripped) if stripped.startswith("{") else io.read_json(text)
    if not isinstance(recipe, dict):
        raise ValueError("--recipe: expected a JSON object")
    return recipe


def run_path(template: str, seed: int, n_seeds: int, option: str) -> str:
    """``template`` with ``{seed}`` replaced by ``seed``; without ``{seed}``, the path itself for a single seed."""
    if "{seed}" in template:
        return template.replace("{seed}", str(seed))
    if n_seeds > 1:
        raise ValueError(f"{option}: {template!r} needs {{seed}} in it to keep the runs of several seeds apart")
    return template


def _live_tracking(stack: contextlib.ExitStack, spec: str, recipe: Mapping[str, Any], seeds: Sequence[int]):
    """``{seed: tracking.live_run hook}`` for ``--track SPEC`` (entered on ``stack``); {} without it.

    Imported here (MLflow's imports only when tracking); not a code input of the train jobs
    (``ablationlab.stages.EXCLUDED``): live logging never changes a run's files.
    """
    if not spec.strip():
        return {}
    from ablationlab import live_mlflow

    return {seed: stack.enter_context(live_mlflow.live_run(spec, recipe=complete(recipe), seed=seed)) for seed in seeds}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab train",
        description="Train one experiment (a recipe) for one or several seeds on prepared data, in one process. "
        "Writes recipe.json, history.csv, train.json, weights_init.pt, weights.pt and weights_best.pt to each "
        "run's --out; checkpoints every epoch to its --checkpoint-dir/last.pt and resumes from it when re-run "
        "with the same recipe and seed. A diverging run (non-finite loss) is a result: status 'diverged', exit 0.",
    )
    parser.add_argument("--data", required=True, help="prepared data directory (from `prepare`)")
    parser.add_argument(
        "--recipe",
        required=True,
        help="recipe as inline JSON or a JSON file; missing keys take the defaults (docs/contracts.md)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        required=True,
        dest="seeds",
        metavar="SEED",
        help="random seed(s) (weights init, shuffling, augmentation): one run per seed",
    )
    parser.add_argument(
        "--out", required=True, help="run directory to write the outputs to; {seed} in it stands for each seed"
    )
    parser.add_argument(
        "--checkpoint-dir", required=True, help="directory for last.pt (resume point); {seed} as in --out"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps; GPUs are those in "
        "CUDA_VISIBLE_DEVICES (default: auto)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--together",
        choices=("auto", "yes", "no"),
        default="auto",
        help="train the seeds at once, their steps interleaved (on CUDA each on its own stream) or one after "
        "another; auto: at once on CUDA only (default: auto)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="K",
        help="stop once K epochs are done, leaving the checkpoint (for testing resume)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    parser.add_argument(
        "--track",
        default="",
        metavar="SPEC",
        help="live MLflow logging of every epoch: the JSON of ablationlab.live_mlflow.live_spec "
        "(the pipeline passes it when tracking.live or tracking.system_metrics is on)",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="then evaluate each run on the test split in this process, as `python -m ablationlab "
        "evaluate --run OUT` does (one process start per experiment instead of one per run and stage)",
    )
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    io.configure_logging()
    try:
        recipe = load_recipe(args.recipe)
        n = len(args.seeds)
        runs = [
            (s, run_path(args.out, s, n, "--out"), run_path(args.checkpoint_dir, s, n, "--checkpoint-dir"))
            for s in args.seeds
        ]
        together = {"auto": None, "yes": True, "no": False}[args.together]
        with contextlib.ExitStack() as stack:
            hooks = _live_tracking(stack, args.track, recipe, args.seeds)
            options = {k: getattr(args, k) for k in ("device", "threads", "stop_after", "compile")}
            results = train_runs(args.data, recipe, runs, **options, together=together, on_epoch=hooks)
        done = [out for (_, out, _), result in zip(runs, results) if result["status"] != "stopped"]
        if args.evaluate and done:
            evaluate.evaluate_runs(args.data, done, device=args.device)
    except (ValueError, data.DataError) as exc:
        log.error("%s", exc)
        return 2
    for seed, result in zip(args.seeds, results):
        print(json.dumps({"seed": seed, "status": result["status"], "epochs_run": result["epochs_run"]}))
    return 0
