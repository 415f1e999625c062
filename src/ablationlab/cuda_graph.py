"""A training step captured as one CUDA graph: a replay is one launch instead of a hundred.

A 390k-parameter CNN at batch 64 is launch-bound on a modern GPU: PyTorch spends ~3–4 ms per
step issuing ~100 small kernels (indexing, augmentation, forward, backward, optimizer) that the
GPU finishes far sooner. :class:`CapturedStep` records ``body()`` (everything one step does on
the device, reading its inputs from static buffers) once with ``torch.cuda.graph`` and replays
it; a step then costs the GPU's time plus a few microseconds of Python.

Capture follows PyTorch's whole-network recipe ("CUDA Graphs" in the CUDA semantics notes):
a few eager warm-up steps on a side stream (cuDNN/cuBLAS handles, autotuning, the optimizer's
lazily created state), grads set to None, then the capture. The warm-up must not change the
run, so everything it touches is put back exactly: weights and buffers (copied back in place,
so the graph's addresses stay valid), the optimizer's state (a state the warm-up created is
zeroed: for SGD momentum, Adam, AdamW and RMSprop a zero state is what the first real step
starts from), the step's accumulators and the RNG states. The learning rate is a constant of
the graph: when a scheduler changes it (an epoch boundary), the step is captured again.

Which steps can be captured is decided up front (:func:`not_capturable`), from what was seen
on an H200 (torch 2.11): kornia's blur failed to capture, and a failed capture can leave the
CUDA generator unusable for the rest of the process ("Offset increment outside graph capture"),
so such recipes train eagerly from the start. A capture that fails anyway falls back to eager
steps with a warning. The eager step (:func:`ablationlab.train.eager_step`) is the reference: a
captured step runs exactly its operations, only launched from a graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

log = logging.getLogger("ablationlab.cuda_graph")

WARMUP_STEPS = 3
# optimizers whose step can be captured: SGD as is; Adam, AdamW, RMSprop with capturable=True
# (their step counter lives on the device); Adagrad reads its counter on the host
CAPTURABLE_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")


def not_capturable(recipe: Mapping[str, Any], device: torch.device, *, scaled: bool, compiled: bool) -> str | None:
    """Why the recipe's training step cannot be a CUDA graph on ``device`` (None: it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if compiled:
        return "--compile runs the model through torch.compile instead"
    if not recipe["drop_last"]:
        return "drop_last: false makes the last batch of an epoch smaller (a graph has fixed shapes)"
    if recipe["optimizer"]["name"] not in CAPTURABLE_OPTIMIZERS:
        return f"optimizer {recipe['optimizer']['name']} reads its step counter on the host"
    kornia = [
        a["name"] for a in recipe["augment"] if a["name"] == "blur" or (a["name"] == "color_jitter" and a.get("hue"))
    ]
    if kornia:
        return f"augmentation {kornia[0]} runs kornia's filters, which synchronise with the host"
    if recipe["scheduler"]["name"] == "onecycle":
        return "onecycle changes the learning rate at every step"
    if scaled:
        return "float16 loss scaling checks for inf/nan on the host"
    return None


def _tensors(state: Mapping[Any, Mapping[str, Any]]) -> dict[tuple[int, str], torch.Tensor]:
    """The tensors of an optimizer's ``state`` by (parameter id, name)."""
    return {(id(p), k): v for p, s in state.items() for k, v in s.items() if isinstance(v, torch.Tensor)}


class CapturedStep:
    """The training step ``eager(idx)`` as a CUDA graph: ``step(idx)`` copies the batch's indices into a
    static buffer and replays the graph, captured at the first call and again whenever the learning rate
    changed. A capture that fails trains on with ``eager`` (``failed`` says why).

    ``model``, ``optimizer`` and ``accumulators`` (tensors ``eager`` adds to) are what a step changes
    besides its outputs; the warm-up before the first capture leaves them (and the RNGs) as it found them.
    """

    def __init__(
        self,
        eager: Callable[[torch.Tensor], None],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        accumulators: list[torch.Tensor],
        batch_size: int,
    ):
        self.eager, self.model, self.optimizer, self.accumulators = eager, model, optimizer, accumulators
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=accumulators[0].device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.lrs: tuple[float, ...] | None = None
        self.captures = 0
        self.failed: str | None = None

    def __call__(self, idx: torch.Tensor) -> None:
        if self.failed is None:
            self.idx.copy_(idx, non_blocking=True)
            try:
                if self.graph is None or self._lrs() != self.lrs:
                    self._capture()
                self.graph.replay()
                return
            except RuntimeError as exc:  # a capture the up-front check did not foresee: train on, eagerly
                log.warning("training eagerly: the step could not be captured as a CUDA graph (%s)", exc)
                self.graph, self.failed = None, f"capture failed: {exc}"
        self.eager(idx)

    def _body(self) -> None:
        self.eager(self.idx)

    def _lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def _warm_up(self) -> None:
        """Run the step eagerly a few times on a side stream, then put back everything it changed."""
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        before = {k: v.clone() for k, v in _tensors(self.optimizer.state).items()}
        sums = [a.clone() for a in self.accumulators]
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(weights[k])
            for key, v in _tensors(self.optimizer.state).items():
                v.copy_(before[key]) if key in before else v.zero_()
            for a, s in zip(self.accumulators, sums):
                a.copy_(s)
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1])

    def _capture(self) -> None:
        if self.graph is None:
            self._warm_up()
        self.graph = None  # frees the previous capture's memory pool
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads inside the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        self.graph, self.lrs = graph, self._lrs()
        self.captures += 1
        log.debug("captured the training step as a CUDA graph (capture %d, lr %s)", self.captures, self.lrs)
