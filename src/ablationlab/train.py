"""Stage ``train``: one experiment (a recipe) for one seed, resumable and bit-reproducible.

The loop is deliberately plain (nanoGPT style). The whole dataset lives as one uint8
tensor on the training device, moved there once; every epoch draws a seeded
``randperm`` and batches are index slices of it. A batch goes through
:class:`ablationlab.runtime.Preprocess` (float in [0, 1], augmented per image on the
device, resized, standardized), then through :func:`train_step`. The validation split
is evaluated after every epoch, without augmentation. What a trained model needs to run
(network, preprocessing, loss, inference) lives in :mod:`ablationlab.runtime`; this module
is the loop, its optimizer and scheduler, determinism and checkpoints.

After every epoch ``{checkpoint_dir}/last.pt`` is written atomically with everything
needed to continue: model, optimizer, scheduler, grad scaler, early-stopping state,
history, best weights (the fields of :class:`LoopState`) and every RNG state (torch CPU
and CUDA, numpy, python). A run started again with the same recipe, seed and data
resumes from it and, on the CPU, produces bit-identical history (except the timing
columns) and weights to a run that was never interrupted. A checkpoint of another recipe/seed/data is ignored.

A non-finite loss ends the run with status ``diverged`` (a result, not a crash): the
outputs are still written, with the weights of the last finite epoch (or the initial
ones). Statuses: ``finished``, ``early_stopped``, ``diverged``.

Outputs in ``out_dir`` (``docs/contracts.md``): ``recipe.json``, ``history.csv``,
``weights_init.pt``, ``weights.pt`` and, written last, ``train.json``.

A partial batch at the end of an epoch is trained on, except a single left-over image
(batch norm cannot train on a batch of one); it is dropped for that epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data, defaults, evaluate, io, models
from . import device as devices
from .recipe import complete
from .runtime import Preprocess, build_network, make_loss, predict
from .schema import check_recipe

log = logging.getLogger("ablationlab.train")

OPTIMIZERS = defaults.allowed("optimizer.name")  # make_optimizer builds each (tests/test_defaults.py)
SCHEDULERS = defaults.allowed("scheduler.name")  # make_scheduler builds each
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]
TIMING_COLUMNS = ("seconds", "images_per_s")
CHECKPOINT_VERSION = 1


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


def make_optimizer(params, opt: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of the recipe's ``optimizer`` section over ``params``."""
    name, lr, wd, momentum = opt["name"], opt["lr"], opt["weight_decay"], opt["momentum"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=bool(opt["nesterov"]), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=wd)
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


# --------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """Everything one training step needs. ``model`` owns the weights; ``net`` is what runs (maybe compiled)."""

    model: nn.Module
    net: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    preprocess: Preprocess
    scaler: torch.amp.GradScaler
    device: torch.device
    batch_size: int
    step_scheduler_per_batch: bool = False


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch: partial last batch kept, unless it is a single image."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def setup(
    recipe: Mapping[str, Any], meta: Mapping[str, Any], n_train: int, device: torch.device, *, compile: bool = False
) -> Engine:
    """Build model, optimizer, scheduler, loss and preprocessing for ``recipe`` on ``device``."""
    model = build_network(recipe, meta).to(device=device, memory_format=devices.memory_format(device))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no trainable parameters (model.train: frozen left nothing to learn)")
    optimizer = make_optimizer(params, recipe["optimizer"])
    steps = steps_per_epoch(n_train, recipe["batch_size"])
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
        scaler=devices.grad_scaler(device),
        device=device,
        batch_size=recipe["batch_size"],
        step_scheduler_per_batch=recipe["scheduler"]["name"] == "onecycle",
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


def train_epoch(
    engine: Engine, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, on_step: Callable[[], None] | None = None
) -> dict[str, float]:
    """One pass over ``x``/``y`` (uint8 and labels on the device) in the order ``order`` (indices on the device)."""
    engine.model.train()
    loss_sum = torch.zeros((), device=engine.device)
    correct = torch.zeros((), dtype=torch.long, device=engine.device)
    seen = 0
    start = time.perf_counter()
    for step in range(steps_per_epoch(len(order), engine.batch_size)):
        idx = order[step * engine.batch_size : (step + 1) * engine.batch_size]
        batch_loss, batch_correct = train_step(engine, engine.preprocess(x[idx], train=True), y[idx])
        loss_sum += batch_loss
        correct += batch_correct
        seen += len(idx)
        if on_step is not None:
            on_step()
    train_loss, train_correct = loss_sum.item(), correct.item()  # one device sync per epoch
    seconds = time.perf_counter() - start
    return {
        "train_loss": train_loss / seen,
        "train_acc": train_correct / seen,
        "train_seconds": seconds,
        "images_per_s": seen / seconds,
    }


def validate_epoch(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
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


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
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


# --------------------------------------------------------------------------- the run


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next; its fields are keys of ``last.pt``."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None  # best value of early_stopping.monitor so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one
    best_state: dict[str, torch.Tensor] | None = None  # the best weights (early_stopping.restore_best)
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


def _start(engine: Engine, ckpt_path: Path, init_path: Path, key: str) -> LoopState:
    """The loop state to begin with: restored from the checkpoint of this key (engine and RNGs too), or a fresh
    one, the initial weights then saved to ``init_path``."""
    ckpt = load_checkpoint(ckpt_path, key)
    if ckpt is None:
        io.save_torch(init_path, cpu_state(engine.model))
        return LoopState()
    engine.model.load_state_dict(ckpt["model"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    if engine.scheduler is not None:
        engine.scheduler.load_state_dict(ckpt["scheduler"])
    engine.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = LoopState.from_checkpoint(ckpt)
    log.info("resuming from epoch %d (checkpoint %s)", state.epoch, ckpt_path)
    return state


def _save_checkpoint(path: Path, key: str, seed: int, state: LoopState, engine: Engine) -> None:
    io.save_torch(
        path,
        {
            "version": CHECKPOINT_VERSION,
            "key": key,
            "seed": seed,
            **state.as_checkpoint(),
            "model": engine.model.state_dict(),
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
    """After epoch ``row``: stop on a non-finite loss (back to the ``last_finite`` weights), else track the best
    epoch, step an epoch scheduler and stop early when ``es`` (early_stopping) says so."""
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
        if es["enabled"] and es["restore_best"]:
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


def _history_row(epoch: int, lr: float, seconds: float, measured: dict[str, float]) -> dict[str, float]:
    """The epoch's ``history.csv`` row (``HISTORY_COLUMNS``) from what training and validation measured."""
    row = {"epoch": epoch, **{k: measured[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}}
    row.update(lr=lr, seconds=seconds, images_per_s=measured["images_per_s"])
    return row


def _log_epoch(row: dict[str, float], epochs: int, bar) -> None:
    """One line per epoch: on the progress bar when there is one (then closed), else in the log."""
    summary = (
        f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} lr {row['lr']:.3g} "
        f"{row['seconds']:.1f}s {row['images_per_s']:.0f} img/s"
    )
    if bar is not None:
        bar.set_postfix_str(summary.split(" ", 2)[2])
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


def _finish(state: LoopState, model: nn.Module, epochs: int) -> None:
    """After the loop: a run still going has ``finished``; the best weights go back into ``model`` when
    early stopping kept them (``restore_best``), unless the run diverged."""
    if state.status is None:
        state.status, state.stop_reason, state.message = "finished", "epochs", f"completed {epochs} epochs"
    if state.status != "diverged" and state.best_state is not None:
        model.load_state_dict(state.best_state)


def _result(state: LoopState, model: nn.Module, dev: torch.device, seed: int, wall_seconds: float) -> dict[str, Any]:
    """The content of ``train.json``."""
    best = state.history[state.best_epoch - 1] if state.best_epoch else None
    trainable, total = models.count_params(model)
    return {
        "status": state.status,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch or None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_acc": best["val_acc"] if best else None,
        "stop_reason": state.stop_reason,
        "message": state.message,
        "params": trainable,
        "params_total": total,
        "device": devices.describe(dev),
        "torch_version": torch.__version__,
        "wall_seconds": wall_seconds,
        "seed": seed,
    }


def _write_outputs(out_dir: Path, recipe, state: LoopState, model: nn.Module, init_path: Path, result) -> None:
    """The run files (``docs/contracts.md``), ``train.json`` last."""
    io.write_json(out_dir / "recipe.json", recipe)
    io.write_csv(out_dir / "history.csv", pd.DataFrame(state.history, columns=HISTORY_COLUMNS))
    io.save_torch(out_dir / "weights_init.pt", io.load_torch(init_path))
    io.save_torch(out_dir / "weights.pt", cpu_state(model))
    io.write_json(out_dir / "train.json", result)
    log.info(
        "%s after %d epochs: %s (best epoch %s); wrote %s",
        result["status"],
        result["epochs_run"],
        result["message"],
        result["best_epoch"],
        out_dir,
    )


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
    """Train ``recipe`` on the prepared data in ``data_dir`` with ``seed``; write the run files to ``out_dir``.

    Resumes from ``{checkpoint_dir}/last.pt`` when it belongs to the same recipe, seed and
    data. ``stop_after=k`` stops once k epochs are done (checkpoint left, no outputs
    written; returns ``{"status": "stopped", "epochs_run": k}``) — used to test resuming.
    ``on_epoch(row)`` is called with each epoch's history row once it is checkpointed
    (live MLflow logging: :func:`ablationlab.tracking.live_run`).
    Returns the content of ``train.json``.
    """
    started = time.perf_counter()
    recipe = complete(recipe)
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    dev = devices.pick(device)
    if threads:
        torch.set_num_threads(int(threads))
    meta = data.load_meta(data_dir)
    n_train = meta["splits"]["train"]
    validate(recipe, n_train)
    epochs, es = recipe["epochs"], recipe["early_stopping"]

    configure_determinism(dev)
    seed_everything(seed)
    engine = setup(recipe, meta, n_train, dev, compile=compile)  # bad model/augment settings fail here
    x_train, y_train, x_val, y_val = _load_splits(data_dir, n_train, dev)
    ckpt_path, init_path = checkpoint_dir / "last.pt", checkpoint_dir / "weights_init.pt"
    key = recipe_key(recipe, seed, meta)
    state = _start(engine, ckpt_path, init_path, key)
    wall_before = state.wall_seconds
    log.info(
        "training %s on %s (%d train / %d val images), seed %d, device %s, %d trainable parameters",
        recipe["model"]["name"],
        meta.get("dataset", data_dir),
        len(y_train),
        len(y_val),
        seed,
        devices.describe(dev),
        models.count_params(engine.model)[0],
    )

    while state.status is None and state.epoch < epochs:
        if stop_after is not None and state.epoch >= stop_after:
            log.info("stopping after epoch %d as asked (--stop-after); checkpoint %s", state.epoch, ckpt_path)
            return {"status": "stopped", "epochs_run": state.epoch}
        epoch, last_finite = state.epoch + 1, cpu_state(engine.model)
        lr = engine.optimizer.param_groups[0]["lr"]
        bar = _progress(epoch, epochs, steps_per_epoch(len(y_train), engine.batch_size))
        tic = time.perf_counter()
        order = epoch_order(len(y_train), seed, epoch, dev)
        measured = train_epoch(engine, x_train, y_train, order, on_step=bar.update if bar is not None else None)
        measured |= validate_epoch(engine, x_val, y_val)
        row = _history_row(epoch, lr, time.perf_counter() - tic, measured)
        _log_epoch(row, epochs, bar)
        state.history.append(row)
        state.epoch = epoch
        _end_of_epoch(state, row, engine, es, last_finite)
        state.wall_seconds = wall_before + time.perf_counter() - started
        _save_checkpoint(ckpt_path, key, seed, state, engine)
        if on_epoch is not None:
            on_epoch(row)

    _finish(state, engine.model, epochs)
    result = _result(state, engine.model, dev, seed, wall_before + time.perf_counter() - started)
    _write_outputs(out_dir, recipe, state, engine.model, init_path, result)
    return result


# --------------------------------------------------------------------------- CLI


def load_recipe(text: str) -> dict[str, Any]:
    """A recipe from inline JSON or from a JSON file path."""
    stripped = text.strip()
    with io.json_errors("--recipe", missing=f"no such file {text!r} (give a JSON file or an inline JSON object)"):
        recipe = json.loads(stripped) if stripped.startswith("{") else io.read_json(text)
    if not isinstance(recipe, dict):
        raise ValueError("--recipe: expected a JSON object")
    return recipe


def _live_tracking(spec: str, recipe: Mapping[str, Any], seed: int):
    """``tracking.live_run`` for ``--track SPEC``; a null context without it.

    Imported here (MLflow's imports only when tracking); not a code input of the train jobs
    (``ablationlab.stages.EXCLUDED``): live logging never changes a run's files.
    """
    if not spec.strip():
        return contextlib.nullcontext()
    from ablationlab import tracking

    return tracking.live_run(spec, recipe=complete(recipe), seed=seed)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab train",
        description="Train one experiment (a recipe) for one seed on prepared data. Writes recipe.json, "
        "history.csv, train.json, weights_init.pt and weights.pt to --out; checkpoints every epoch "
        "to --checkpoint-dir/last.pt and resumes from it when re-run with the same recipe and seed. "
        "A diverging run (non-finite loss) is a result: status 'diverged', exit code 0.",
    )
    parser.add_argument("--data", required=True, help="prepared data directory (from `prepare`)")
    parser.add_argument(
        "--recipe",
        required=True,
        help="recipe as inline JSON or a JSON file; missing keys take the defaults (docs/contracts.md)",
    )
    parser.add_argument("--seed", type=int, required=True, help="random seed (weights init, shuffling, augmentation)")
    parser.add_argument("--out", required=True, help="run directory to write the outputs to")
    parser.add_argument("--checkpoint-dir", required=True, help="directory for last.pt (resume point)")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps; GPUs are those in "
        "CUDA_VISIBLE_DEVICES (default: auto)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
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
        help="live MLflow logging of every epoch: the JSON of ablationlab.tracking.live_spec "
        "(the pipeline passes it when tracking.live or tracking.system_metrics is on)",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="then evaluate the run on the test split in this process, as `python -m ablationlab "
        "evaluate --run OUT` does (one process start per run instead of two)",
    )
    args = parser.parse_args(argv)
    io.configure_logging()
    try:
        recipe = load_recipe(args.recipe)
        with _live_tracking(args.track, recipe, args.seed) as on_epoch:
            options = {k: getattr(args, k) for k in ("checkpoint_dir", "device", "threads", "stop_after", "compile")}
            result = train(args.data, recipe, args.seed, args.out, **options, on_epoch=on_epoch)
        if args.evaluate and result["status"] != "stopped":  # one process start per run instead of two
            evaluate.evaluate(args.data, args.out, device=args.device)
    except (ValueError, data.DataError) as exc:
        log.error("%s", exc)
        return 2
    print(json.dumps({"status": result["status"], "epochs_run": result["epochs_run"]}))
    return 0
