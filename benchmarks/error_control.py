"""False-positive rate of the verdicts under the null: fixed design and adaptive seeding.

Simulates many synthetic studies with no real effect — a baseline and ``--variants``
variants in one group (one Holm family), every per-seed test accuracy drawn from one
distribution: a shared per-seed term (data order, augmentation: what pairing removes) plus
independent noise per run — and runs each through the workflow's own decision procedure
(:func:`ablationlab.adaptive.look`, which calls stats.compare / stats.holm / stats.verdict):

- ``fixed``: the initial seeds only, one look at level alpha;
- ``adaptive``: looks until decided or ``--max-seeds``, each at alpha / planned looks.

A false positive is a study with any comparison called "significant" (the family-wise
error the procedure controls). Prints, per design, exactly

    design=<fixed|adaptive> studies=<n> fpr=<rate> se=<Monte-Carlo standard error> \
looks=<planned> mean_seeds=<mean seeds per experiment>

    python benchmarks/error_control.py [--studies 2000] [--variants 2] [--seeds 3] [--max-seeds 10] [--step 2]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ablationlab import adaptive
from ablationlab.study import planned_looks


def null_study(variants: int, seeds: int, max_seeds: int, step: int, alpha: float, min_effect: float) -> dict:
    """A study table (the keys adaptive.look reads) of a baseline and ``variants`` variants in one group."""
    looks = planned_looks(seeds, max_seeds, step)
    experiments = [{"id": "baseline", "group": "baseline", "reference": None}]
    experiments += [{"id": f"null/v{i}", "group": "null", "reference": "baseline"} for i in range(variants)]
    return {
        "seeds": list(range(seeds)),
        "experiments": experiments,
        "adaptive": {"max_seeds": max_seeds, "step": step, "looks": looks},
        "statistics": {"alpha": alpha, "power": 0.8, "min_effect": min_effect, "looks": looks},
    }


def null_accuracy(
    study: dict,
    rng: np.random.Generator,
    max_seeds: int,
    mean: float = 0.95,
    seed_sd: float = 0.01,
    run_sd: float = 0.005,
) -> dict:
    """``{experiment: {seed: accuracy}}`` for every seed a study can reach; no experiment differs."""
    seeds = range(max_seeds)
    shared = rng.normal(0.0, seed_sd, max_seeds)
    return {
        e["id"]: {s: float(mean + shared[s] + rng.normal(0.0, run_sd)) for s in seeds} for e in study["experiments"]
    }


def run_study(study: dict, accuracy: dict) -> dict:
    """The procedure's last look on one study."""
    result, number = None, 0
    while result is None or not result["done"]:
        number += 1
        result = adaptive.look(study, accuracy, number, result)
    return result


def simulate(
    studies: int,
    *,
    adaptive_design: bool,
    variants: int = 2,
    seeds: int = 3,
    max_seeds: int = 10,
    step: int = 2,
    alpha: float = 0.05,
    min_effect: float = 0.002,
    rng_seed: int = 0,
) -> dict:
    """False-positive rate (any "significant") over ``studies`` null studies, with its Monte-Carlo SE."""
    rng = np.random.default_rng(rng_seed)
    study = null_study(variants, seeds, max_seeds if adaptive_design else seeds, step, alpha, min_effect)
    false, n_seeds = 0, []
    for _ in range(studies):
        last = run_study(study, null_accuracy(study, rng, max_seeds))
        false += any(v["verdict"] == "significant" for v in last["verdicts"].values())
        n_seeds += [len(s) for s in last["seeds"].values()]
    fpr = false / studies
    return {
        "design": "adaptive" if adaptive_design else "fixed",
        "studies": studies,
        "fpr": fpr,
        "se": math.sqrt(fpr * (1 - fpr) / studies),
        "looks": study["statistics"]["looks"],
        "mean_seeds": float(np.mean(n_seeds)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-seeds", type=int, default=10)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    for design in (False, True):
        r = simulate(
            args.studies,
            adaptive_design=design,
            variants=args.variants,
            seeds=args.seeds,
            max_seeds=args.max_seeds,
            step=args.step,
            alpha=args.alpha,
        )
        print(
            f"design={r['design']} studies={r['studies']} fpr={r['fpr']:.4f} se={r['se']:.4f} "
            f"looks={r['looks']} mean_seeds={r['mean_seeds']:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
