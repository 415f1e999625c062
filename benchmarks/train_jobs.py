"""Shared by the real-data benchmarks: prepare an image folder, run train jobs as the pipeline does.

A job is one ``python -m ablationlab train --seed ... --evaluate`` process (the pipeline's train
job: every seed of one experiment); :func:`run_jobs` runs several at a time, as ``snakemake --cores``
would, and reads each run's files back. Not part of the library: benchmarks only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CIFAR_TGZ = REPO.parent / "shared" / "data" / "cifar10-jpeg.tgz"


def image_folder(source: str | Path, work: Path) -> Path:
    """The image folder ``source``, or the folder a ``.tgz`` of one unpacks to under ``work``."""
    source = Path(source)
    if source.is_dir():
        return source
    target = work / "images"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source) as tar:
            tar.extractall(target, filter="data")
    return target


def prepared(source: str | Path, work: Path, val_size: float = 0.1) -> Path:
    """The prepared tensors of the image folder (``ablationlab.prepare.prepare``, cached under ``work``)."""
    from ablationlab import data, prepare

    out = work / "data"
    try:
        data.load_meta(out)
    except data.DataError:
        prepare.prepare("imagefolder", out, root=image_folder(source, work), val_size=val_size, split_seed=0)
    return out


@dataclass
class Job:
    """One train job: ``recipe`` for ``seeds``, runs under ``out/{name}/seed{n}``."""

    name: str
    recipe: dict[str, Any]
    seeds: list[int]
    options: list[str] = field(default_factory=list)  # more train options (--device, --threads ...)


@dataclass
class Done:
    job: Job
    seconds: float  # wall time of the process, start-up included
    returncode: int
    runs: list[dict[str, Any]]  # per seed: seed, train (train.json), metrics (metrics.json), history (DataFrame)
    log: str


def _read_runs(root: Path, job: Job) -> list[dict[str, Any]]:
    runs = []
    for seed in job.seeds:
        d = root / job.name / f"seed{seed}"
        if (d / "metrics.json").is_file():
            runs.append(
                {
                    "seed": seed,
                    "train": json.loads((d / "train.json").read_text()),
                    "metrics": json.loads((d / "metrics.json").read_text()),
                    "history": pd.read_csv(d / "history.csv"),
                }
            )
    return runs


def run_job(job: Job, data_dir: Path, root: Path, timeout: float | None = None) -> Done:
    """Run ``job`` in a fresh process (start-up timed too); a job past ``timeout`` seconds is killed."""
    cmd = [
        sys.executable,
        "-m",
        "ablationlab",
        "train",
        *("--data", str(data_dir), "--recipe", json.dumps(job.recipe), "--seed", *map(str, job.seeds)),
        *("--out", str(root / job.name / "seed{seed}"), "--checkpoint-dir", str(root / "ckpt" / job.name / "{seed}")),
        "--evaluate",
        *job.options,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        code, log = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, log = -9, f"killed after {timeout:.0f} s\n{exc.stderr or ''}"
    return Done(job, time.perf_counter() - start, code, _read_runs(root, job), log)


def run_jobs(jobs: list[Job], data_dir: Path, root: Path, parallel: int, deadline: float | None = None) -> list[Done]:
    """Run ``jobs``, ``parallel`` at a time, in order; a job not started before ``deadline`` (a
    ``time.perf_counter()`` value) is skipped, one still running then is killed."""

    def one(job: Job) -> Done | None:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            return None
        done = run_job(job, data_dir, root, timeout=left)
        status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode}): {done.log.strip()[-300:]}"
        print(f"  {job.name:<34} {len(job.seeds)} seeds {done.seconds:6.1f} s  {status}", flush=True)
        return done

    with ThreadPoolExecutor(parallel) as pool:
        return [d for d in pool.map(one, jobs) if d is not None]
