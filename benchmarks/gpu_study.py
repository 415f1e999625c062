"""The default study's training on one machine: wall time and runs/s of config.yaml's train jobs.

Resolves ``config.yaml`` (or ``--config``) with the library, puts its data on an image folder
(default: the real CIFAR-10 of ``../shared/data/cifar10-jpeg.tgz``, as ``data.dataset:
imagefolder`` would) and runs the train job of every experiment outside the transfer group
exactly as the pipeline does (``python -m ablationlab train --seed 0 1 2 --evaluate``: one
process per experiment, its seeds at once on a GPU), ``--parallel`` jobs at a time, longest
first. Then a sample of the transfer group: each of its variants for ``--transfer-epochs``
epoch(s) and one seed, ImageNet weights replaced by ``none`` (nothing can be downloaded here),
from which the whole group's time is extrapolated. Prints each job's wall time, then

    study_wall_s=<s> runs=<n> runs_per_s=<r> transfer_sample_s=<s> transfer_group_estimate_s=<s>

``--minutes`` bounds the non-transfer part (jobs not started by then are skipped, running ones
killed, and the line says how many runs finished).

    python benchmarks/gpu_study.py [--parallel 8] [--threads 2] [--minutes 5] [--seeds 0 1 2]
        [--data ../shared/data/cifar10-jpeg.tgz] [--work /tmp/ablationlab-gpu-study] [--limit N]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import yaml
from train_jobs import CIFAR_TGZ, REPO, Job, prepared, run_jobs

from ablationlab import study as abl_study
from ablationlab.recipe import complete
from ablationlab.train import steps_per_epoch


def study_jobs(config_path: Path, seeds: list[int] | None, n_train: int) -> tuple[list[Job], list[Job]]:
    """(train jobs outside the transfer group, longest first; the transfer group's jobs), from the config."""
    config = yaml.safe_load(config_path.read_text())
    if seeds is not None:
        config["seeds"] = seeds
    table = abl_study.load(config).experiments
    jobs, transfer = [], []
    for e in table["experiments"]:
        recipe = complete(e["recipe"])
        job = Job(e["id"], recipe, list(table["seeds"]))
        (transfer if e["group"] == "transfer" else jobs).append(job)

    def cost(job: Job) -> float:
        r = job.recipe
        width = 4.0 if r["model"]["name"] == "vgg_style" else 1.0
        return r["epochs"] * steps_per_epoch(n_train, r["batch_size"], r["drop_last"]) * width

    return sorted(jobs, key=cost, reverse=True), transfer


def transfer_sample(jobs: list[Job], epochs: int) -> list[Job]:
    """Each transfer variant for ``epochs`` epochs and its first seed, without pretrained weights."""
    out = []
    for job in jobs:
        recipe = copy.deepcopy(job.recipe)
        recipe["model"]["weights"] = "none"
        recipe["epochs"] = epochs
        out.append(Job(job.name + "-sample", recipe, job.seeds[:1], job.options))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--data", default=str(CIFAR_TGZ), help="image folder or .tgz of one (default: CIFAR-10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's")
    parser.add_argument("--parallel", type=int, default=8, help="train jobs at a time (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job (default 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--minutes", type=float, default=None, help="bound on the non-transfer part")
    parser.add_argument("--limit", type=int, default=None, help="only the first N jobs (smoke tests)")
    parser.add_argument("--transfer-epochs", type=int, default=1)
    parser.add_argument("--no-transfer", action="store_true")
    parser.add_argument("--work", default="/tmp/ablationlab-gpu-study")
    args = parser.parse_args(argv)
    work = Path(args.work)
    tic = time.perf_counter()
    data_dir = prepared(args.data, work)
    from ablationlab import data

    n_train = data.load_meta(data_dir)["splits"]["train"]
    print(f"data prepared in {time.perf_counter() - tic:.1f} s", flush=True)
    jobs, transfer = study_jobs(Path(args.config), args.seeds, n_train)
    options = ["--device", args.device, "--threads", str(args.threads)]
    for job in jobs + transfer:
        job.options = options
    jobs = jobs[: args.limit]
    deadline = None if args.minutes is None else time.perf_counter() + 60 * args.minutes
    tic = time.perf_counter()
    done = run_jobs(jobs, data_dir, work / "runs", args.parallel, deadline)
    wall = time.perf_counter() - tic
    runs = sum(len(d.runs) for d in done)
    planned = sum(len(j.seeds) for j in jobs)
    line = f"study_wall_s={wall:.1f} runs={runs} of {planned} runs_per_s={runs / wall:.2f}"
    if not args.no_transfer and transfer:
        sample = transfer_sample(transfer[: args.limit], args.transfer_epochs)
        tic = time.perf_counter()
        took = run_jobs(sample, data_dir, work / "transfer", args.parallel)
        sample_s = time.perf_counter() - tic
        per_epoch = sum(d.seconds for d in took) / max(1, len(took)) / args.transfer_epochs
        full = sum(j.recipe["epochs"] * len(j.seeds) for j in transfer) * per_epoch / args.parallel
        line += f" transfer_sample_s={sample_s:.1f} transfer_group_estimate_s={full:.0f}"
    print(line)


if __name__ == "__main__":
    main()
