"""Device selection and the CUDA-only speed-ups (mixed precision, channels_last).

``pick("auto")`` prefers CUDA, then Apple MPS, then the CPU. On a multi-GPU
workstation each job sees only the GPUs in ``CUDA_VISIBLE_DEVICES`` (the pipeline
sets it per job, SLURM sets it per allocation); ``auto`` and ``cuda`` then mean the
first *visible* GPU, ``cuda:N`` the N-th visible one.

Everything else in the training code is the same on every device: the helpers here
return no-ops (``nullcontext``, ``torch.contiguous_format``, a disabled GradScaler)
when the device is not CUDA.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import torch

# torch.optim.Optimizer's methods wrapped in torch._disable_dynamo (torch/optim/optimizer.py)
_DYNAMO_DISABLED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def pick(device: str = "auto") -> torch.device:
    """The torch device for ``device``: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda[:N]`` or ``mps``."""
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible "
                "(check CUDA_VISIBLE_DEVICES)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} requested but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bfloat16 on CUDA when supported, else float16; None (full precision) off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """Mixed-precision context on CUDA, a no-op context elsewhere."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    # no cast cache: a training step may be captured as a CUDA graph (ablationlab.cuda_graph), which
    # PyTorch asks to autocast without it; each weight is used once per forward, so nothing is lost
    return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=False)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaler, enabled only for float16 autocast (bfloat16 needs none); disabled it is a pass-through."""
    enabled = amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if enabled else "cpu", enabled=enabled)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (faster convolutions with tensor cores), the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def describe(device: torch.device) -> str:
    """Human-readable device name for train.json and logs."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def optimizers_without_dynamo() -> None:
    """Let torch's optimizers run without importing ``torch._dynamo`` (nearly as costly to import as torch).

    Outside torch.compile the import buys nothing: ``Optimizer.add_param_group``, ``zero_grad``,
    ``state_dict`` and ``load_state_dict`` are wrapped in ``torch._disable_dynamo`` (its first call
    imports ``torch._dynamo`` to turn off a frame hook that only torch.compile turns on), and each
    optimizer's ``step`` in a wrapper that imports it to mark graph breaks (no-ops outside tracing)
    around the step run with grad mode ``defaults["differentiable"]``. Here the disabled form of
    each method is the method itself, and each ``step`` runs the same step in the same grad mode.
    Does nothing once ``torch._dynamo`` is imported: then something may compile.
    """
    if "torch._dynamo" in sys.modules:
        return
    from torch.optim.optimizer import _use_grad_for_differentiable

    use_grad_code = _use_grad_for_differentiable(lambda *args: None).__code__  # the step's wrapper
    for name in _DYNAMO_DISABLED_METHODS:
        original = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if original is not None and not hasattr(original, "__dynamo_disable"):
            original.__dynamo_disable = original
    for cls in _subclasses(torch.optim.Optimizer):
        step = cls.__dict__.get("step")
        hooked = getattr(step, "hooked", False)  # wrapped by Optimizer.profile_hook_step already
        use_grad = step.__wrapped__ if hooked else step
        if getattr(use_grad, "__code__", None) is not use_grad_code:
            continue
        eager = _eager_step(use_grad.__wrapped__)
        if hooked:
            eager = torch.optim.Optimizer.profile_hook_step(eager)
            eager.hooked = True
        cls.step = eager


def _eager_step(step):
    @functools.wraps(step)
    def eager_step(self, *args, **kwargs):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)

    return eager_step


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
