"""Do the pipeline's numbers hold on real data? The source reports' baseline, + BatchNorm and + flip/crop on CIFAR-10.

Trains each experiment for ``--seeds`` seeds with the library's own train jobs (``python -m
ablationlab train --seed ... --evaluate``, one process per experiment and setting, ``--parallel``
at a time) on an image folder (default: the real CIFAR-10 in ``../shared/data/cifar10-jpeg.tgz``,
val_size 0.1: 45,000 training images, so batch 64 leaves a partial last batch of 8), once with
``drop_last: true`` (the default) and once with ``false`` (the old loop), and prints per setting
and experiment: mean ± sd test accuracy (and of the best validation epoch's weights), the largest
late validation swing (the largest |Δ val acc| between consecutive epochs among the last 5 moves,
the largest over the seeds), the curve diagnostics' flags, and the pipeline's verdict against the
baseline (``stats.compare``, Holm over the setting's two comparisons, ``stats.verdict`` with
min_effect 1 pp) with the seeds it would need.

    python benchmarks/fidelity.py [--data ../shared/data/cifar10-jpeg.tgz] [--seeds 3] [--epochs 10]
        [--drop-last true false] [--device auto] [--parallel 3] [--work /tmp/fidelity] [--minutes 30]

On a 2-core CPU a 10-epoch CIFAR run takes about 10 minutes (``--seeds 1 --experiments baseline``);
on one H200 the full table takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from train_jobs import CIFAR_TGZ, Job, prepared, run_jobs

from ablationlab import diagnostics, stats
from ablationlab.recipe import complete

EXPERIMENTS = {
    "baseline": {},
    "bn": {"model": {"batch_norm": True}},
    "flip_crop": {"augment": [{"name": "hflip", "p": 0.5}, {"name": "crop", "padding": 4}]},
}
MIN_EFFECT = 0.01
LATE_MOVES = 5


def largest_late_swing(history) -> float:
    """The largest |Δ val acc| between consecutive epochs among the last ``LATE_MOVES`` moves."""
    moves = np.abs(np.diff(history["val_acc"].to_numpy(float)))[-LATE_MOVES:]
    return float(moves.max()) if len(moves) else math.nan


def summarize(done, setting: str) -> list[dict]:
    """One row per experiment of the setting: accuracies, swing, diagnostics and verdict vs the baseline."""
    acc = {d.job.name.split("/")[1]: {r["seed"]: r["metrics"]["test_acc"] for r in d.runs} for d in done}
    base = acc.get("baseline", {})
    rows, compared = [], []
    for d in done:
        name, runs = d.job.name.split("/")[1], d.runs
        values, best = list(acc[name].values()), [r["metrics"]["test_acc_best"] for r in runs]
        row = {
            "setting": setting,
            "experiment": name,
            "n": len(values),
            "mean": stats.mean(values),
            "sd": stats.std(values),
            "best_mean": stats.mean(best),
            "swing": max((largest_late_swing(r["history"]) for r in runs), default=math.nan),
            "partial_batch": runs[0]["train"]["partial_batch"] if runs else None,
            "seconds": d.seconds,
        }
        if name != "baseline" and base and values:
            row["cmp"] = stats.compare(acc[name], base)
            row.update(delta=row["cmp"]["delta"], p_value=row["cmp"]["p_value"])
            compared.append(row)
        if runs:
            context = diagnostics.Context(
                delta=row.get("delta"),
                min_effect=MIN_EFFECT,
                n_val=runs[0]["train"]["val_images"],
                recipe=complete(d.job.recipe),
                partial_batch=row["partial_batch"] or 0,
            )
            statuses = [r["train"]["status"] for r in runs]
            row["flags"] = diagnostics.experiment_row(name, [r["history"] for r in runs], statuses, context)["flags"]
        rows.append(row)
    for row, p in zip(compared, stats.holm([r["p_value"] for r in compared])):
        row["p_holm"] = p
        row["verdict"] = stats.verdict(p, row["cmp"]["mde_acc"], min_effect=MIN_EFFECT)
        row["seeds_needed"] = row["cmp"]["seeds_needed"]
        del row["cmp"]
    return rows


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(CIFAR_TGZ), help="image folder or .tgz of one (default: CIFAR-10)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--drop-last", nargs="+", default=["true", "false"], choices=["true", "false"])
    parser.add_argument(
        "--scheduler",
        default="none",
        help="the learning-rate schedule of every experiment (default: none, the source reports')",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job")
    parser.add_argument("--parallel", type=int, default=3, help="train jobs at a time (default 3)")
    parser.add_argument("--work", default="/tmp/ablationlab-fidelity", help="data and runs (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=None, help="skip/kill jobs after this many minutes")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    work = Path(args.work)
    start = time.perf_counter()
    data_dir = prepared(args.data, work)
    print(f"data prepared in {time.perf_counter() - start:.1f} s: {data_dir}", flush=True)
    options = ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    deadline = None if args.minutes is None else time.perf_counter() + 60 * args.minutes
    rows = []
    for setting in args.drop_last:
        jobs = [
            Job(
                f"drop_last_{setting}_{args.scheduler}/{name}",
                {
                    **EXPERIMENTS[name],
                    "epochs": args.epochs,
                    "drop_last": setting == "true",
                    "scheduler": {"name": args.scheduler},
                },
                list(range(args.seeds)),
                options,
            )
            for name in args.experiments
        ]
        tic = time.perf_counter()
        done = run_jobs(jobs, data_dir, work / "runs", args.parallel, deadline)
        print(
            f"drop_last {setting}: {len(done)} jobs, {sum(len(d.runs) for d in done)} runs in "
            f"{time.perf_counter() - tic:.1f} s wall",
            flush=True,
        )
        rows += summarize(done, setting)
    print(
        f"\n{'drop_last':<10}{'experiment':<11}{'n':>3} {'test acc %':>13} {'best-epoch %':>13} "
        f"{'late swing pp':>14} {'Δ pp':>7} {'Holm p':>8}  {'verdict':<10}{'seeds needed':>13}  flags"
    )
    for r in rows:
        print(
            f"{r['setting']:<10}{r['experiment']:<11}{r['n']:>3} {_pct(r['mean']):>6} ± {_pct(r['sd']):<4} "
            f"{_pct(r['best_mean']):>13} {_pct(r['swing']):>14} {_pct(r.get('delta')):>7} "
            f"{r.get('p_holm', math.nan):>8.3g}  {r.get('verdict', '-'):<10}{r.get('seeds_needed', math.nan):>13.0f}  "
            f"{r.get('flags') or '-'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
