"""Training throughput: the library's path vs a naive torchvision recipe vs the compute-only bound.

Trains the source reports' baseline (``simple_cnn``, SGD, batch 64) on CIFAR-shaped random uint8
data (default 5000 images 3×32×32, 10 classes) and prints images/s of

(a) ``library``: ``train()``'s epoch (:func:`ablationlab.train.train_epochs` on one
    :class:`~ablationlab.train.Run`): uint8 data on the device, randperm index slices, per-image
    random crop (padding 4) + horizontal flip, standardization, :func:`ablationlab.train.train_step`
    (on CUDA each step one CUDA graph replay, :mod:`ablationlab.cuda_graph`); the images/s of its
    second epoch (the first warms up);
(b) ``naive``: what the seeds did — PIL images, ``transforms.Compose([RandomCrop(32, 4),
    RandomHorizontalFlip(), ToTensor(), Normalize])``, ``DataLoader(num_workers=2,
    shuffle=True)`` and a plain forward/backward/step loop;
(c) ``compute``: the library's step (:func:`ablationlab.train.make_step`) on inputs preprocessed
    in advance (no augmentation; on CUDA captured the same way): the bound a data pipeline can
    at best reach.

Each measurement trains a freshly initialised model for ``--batches`` batches (after a
short warm-up; the naive loader's worker start-up is timed, as it is paid every epoch);
the modes are measured ``--repeats`` times, interleaved, and the best of each is kept
(the machine may be shared). The last line is exactly
``library_vs_compute=<ratio> library_vs_naive=<ratio>``.

    python benchmarks/throughput.py [--images 5000] [--batch-size 64] [--batches 40] [--repeats 3]
                                    [--threads N] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ablationlab import device as devices
from ablationlab.recipe import complete
from ablationlab.train import (
    Run,
    Shared,
    epoch_order,
    make_step,
    ready,
    seed_everything,
    setup,
    steps_per_epoch,
    train_epochs,
)

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
META = {"channels": 3, "height": 32, "width": 32, "num_classes": 10, "mean": MEAN, "std": STD}
WARMUP_BATCHES = 5
VAL_IMAGES = 256  # the library mode's validation split (each epoch ends with it)


def make_engine(recipe, x, y, dev):
    """A fresh engine for ``recipe`` and the data on ``dev`` (the library's setup, seed 0): what every mode trains."""
    seed_everything(0)
    return setup(recipe, META, len(y), dev), x.to(dev), y.to(dev)


def bench_library(recipe, x, y, dev, batches: int) -> float:
    """The library's training loop, as ``train()`` runs it, over ``batches`` batches per epoch: the images/s
    of its second epoch (a CUDA graph per step where it can)."""
    n, n_val = batches * recipe["batch_size"], VAL_IMAGES
    with tempfile.TemporaryDirectory() as tmp:
        shared = Shared(
            recipe={**recipe, "epochs": 2},
            meta=META,
            device=dev,
            x_train=x[:n].to(dev),
            y_train=y[:n].to(dev),
            x_val=x[-n_val:].to(dev),
            y_val=y[-n_val:].to(dev),
            progress=False,
        )
        run = Run(0, Path(tmp) / "run", Path(tmp) / "ckpt", shared)
        train_epochs([run])
    return run.state.history[-1]["images_per_s"]


def bench_compute(recipe, x, y, dev, batches: int) -> float:
    """The library's step alone on inputs preprocessed in advance (on CUDA as one graph replay per step, as
    the library's steps are): the bound a data pipeline can at best reach."""
    engine, x, y = make_engine(recipe, x, y, dev)
    bs = engine.batch_size
    steps = min(batches, steps_per_epoch(len(y), bs))
    order = epoch_order(len(y), 0, 1, dev)[: steps * bs]
    with torch.no_grad():
        inputs, targets = engine.preprocess(x[order]), y[order]
    step = make_step(replace(engine, preprocess=ready), inputs, targets)
    batches_idx = [torch.arange(i * bs, (i + 1) * bs, device=dev) for i in range(steps)]
    engine.model.train()
    for i in range(min(WARMUP_BATCHES, steps)):
        step(batches_idx[i])
    start = time.perf_counter()
    for i in range(steps):
        step(batches_idx[i])
    engine.correct.item()  # wait for the device
    return steps * bs / (time.perf_counter() - start)


class PILDataset(Dataset):
    """The source reports' pipeline: one PIL image per sample, transformed one at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.images = [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()]
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def bench_naive(recipe, x, y, dev, batches: int) -> float:
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = PILDataset(x, y, transform)
    engine, _, _ = make_engine(recipe, x, y, dev)
    model, optimizer = engine.model, engine.optimizer
    model.train()
    loader = DataLoader(dataset, batch_size=recipe["batch_size"], shuffle=True, num_workers=2)
    seen = 0
    start = time.perf_counter()
    for step, (inputs, targets) in enumerate(loader):  # worker start-up is part of every epoch of this recipe
        if step == batches:
            break
        inputs, targets = inputs.to(dev), targets.to(dev)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        seen += len(targets)
    loss.item()
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="number of random 3×32×32 images (default 5000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--batches", type=int, default=40, help="timed batches per measurement (default 40; at most one epoch)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per mode, interleaved; the best is kept (default 3)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images < args.batch_size:
        parser.error(f"--images {args.images} is smaller than one batch of {args.batch_size}")
    dev = devices.pick(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (args.images,), generator=generator)
    recipe = complete(
        {"batch_size": args.batch_size, "augment": [{"name": "crop", "padding": 4}, {"name": "hflip", "p": 0.5}]}
    )
    print(
        f"device {devices.describe(dev)}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.images} images, batch {args.batch_size} x {args.batches} batches, simple_cnn + crop/flip"
    )
    modes = {"library": bench_library, "naive": bench_naive, "compute": bench_compute}
    best = {name: 0.0 for name in modes}
    for r in range(args.repeats):
        for name, bench in modes.items():
            rate = bench(recipe, x, y, dev, args.batches)
            best[name] = max(best[name], rate)
            print(f"  repeat {r + 1} {name:<8} {rate:8.1f} images/s", flush=True)
    print(f"library  (uint8 tensor on device, per-image crop+flip, train_step): {best['library']:.1f} images/s")
    print(f"naive    (PIL, transforms.Compose, DataLoader num_workers=2):      {best['naive']:.1f} images/s")
    print(f"compute  (train_step on ready batches, no augmentation):           {best['compute']:.1f} images/s")
    print(
        f"library_vs_compute={best['library'] / best['compute']:.3f} "
        f"library_vs_naive={best['library'] / best['naive']:.3f}"
    )


if __name__ == "__main__":
    np.random.seed(0)
    main()
