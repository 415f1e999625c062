"""Per-op cost of ablationlab.augment vs kornia.augmentation, and vs one training step.

Batch 64×3×32×32 float on CPU (or --device), the baseline CNN's forward+backward+SGD
step as the yardstick. Prints milliseconds per batch and the last line
``crop_flip_ms=<ms> step_ms=<ms> crop_flip_share=<fraction of a step>``.

    python benchmarks/augment_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from ablationlab import augment, models
from ablationlab.recipe import AUGMENT_DEFAULTS, DEFAULT_RECIPE, complete


def timeit(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(3):  # best of 3 rounds: the machine is shared
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    d = AUGMENT_DEFAULTS
    pairs = {
        "hflip": K.RandomHorizontalFlip(p=0.5),
        "vflip": K.RandomVerticalFlip(p=0.5),
        "crop": K.RandomCrop((32, 32), padding=4),
        "rotation": K.RandomRotation(15.0, p=1.0),
        "color_jitter": K.ColorJitter(0.2, 0.2, 0.2, 0.0, p=1.0),
        "grayscale": K.RandomGrayscale(p=0.1),
        "blur": K.RandomGaussianBlur(3, (0.1, 2.0), p=0.5),
        "erasing": K.RandomErasing((0.02, 0.2), (0.3, 3.3), p=0.5),
    }
    print(f"{'op':14s} {'ablationlab ms':>15s} {'kornia ms':>10s}")
    for name, kornia_op in pairs.items():
        ours = augment.build([{"name": name, **d[name]}])
        ours_ms, kornia_ms = timeit(lambda: ours(x), args.reps), timeit(lambda: kornia_op(x), args.reps)  # noqa: B023
        print(f"{name:14s} {ours_ms:15.3f} {kornia_ms:10.3f}")
    crop_flip = augment.build(complete({"augment": [{"name": "crop"}, {"name": "hflip"}]})["augment"])
    kornia_crop_flip = K.AugmentationSequential(pairs["crop"], pairs["hflip"])
    cf = timeit(lambda: crop_flip(x), args.reps)
    print(f"{'crop+hflip':14s} {cf:15.3f} {timeit(lambda: kornia_crop_flip(x), args.reps):10.3f}")

    model = models.build_model(DEFAULT_RECIPE["model"], 3, 32, 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch), y).backward()
        opt.step()

    step_ms = timeit(lambda: step(x), max(5, args.reps // 3))
    augmented_ms = timeit(lambda: step(crop_flip(x)), max(5, args.reps // 3))
    print(f"train step (compute only) {step_ms:.2f} ms; with crop+hflip {augmented_ms:.2f} ms")
    print(f"crop_flip_ms={cf:.3f} step_ms={step_ms:.2f} crop_flip_share={cf / step_ms:.4f}")


if __name__ == "__main__":
    main()
