"""Start-up cost of the per-run jobs: train, evaluate, train+evaluate (the pipeline's train job).
The MLflow writer (``track study``) is one job per study, not per run, so it is not measured here.

Prepares the bundled 8x8 ``digits`` in a temporary directory, then runs each job as the
workflow does (``python -m ablationlab train|evaluate ...``, a fresh process) and
measures, median of ``--repeats`` runs:

``train_evaluate`` is ``train --evaluate`` of one seed: compare its ``total_s`` / ``cpu_s`` with the
sum of ``train``'s and ``evaluate``'s. ``quick_train_job`` is the pipeline's train job in the quick
study (presets/quick.yaml's baseline, ``--seed 0 1 2 --evaluate``: one process trains and evaluates
the three seeds); its ``startup_share`` is ``startup_s / total_s``, the part of the job spent before
its first epoch.

- ``startup_s``: wall time from process start (just before the parent spawns it) to the
  job's first useful work: the first epoch (``train.Run.begin_epoch``), the test-set forward
  pass (``evaluate.predict``);
- ``total_s``: wall time of the whole process; ``cpu_s``: its CPU time (user + system), less
  sensitive to the load of a shared machine (on 2 cores running 2 jobs at a time, a study's
  wall time is about the sum of its jobs' CPU time / 2);
- ``imports_s`` and one column per heavy module: import time (cumulative, seconds) as
  ``python -X importtime`` reports it in a separate run of the same job ("-" when the job
  does not import it). ``-X importtime`` slows imports a little: compare its figures with
  each other, and ``startup_s`` between versions.

The yardstick, measured in the same run: ``import_torch`` is a bare ``python -c "import torch"``
(fastest of ``--repeats``); ``startup_min_s`` and ``total_min_s`` are the fastest of the job's runs
(the least disturbed by the machine's load), ``startup_x_torch`` / ``total_x_torch`` those over the
yardstick: figures that scale from one machine to another.

Prints one ``python`` line (bare interpreter start-up), one ``import_torch`` line, then one line per job::

    job=train startup_s=1.62 total_s=1.95 cpu_s=1.90 imports_s=1.40 torch=1.10 pandas=0.21 ... startup_x_torch=1.2

    python benchmarks/job_overhead.py [--repeats 5] [--epochs 4]

Load on the machine changes every figure: run it on an idle machine and note ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HEAVY = [
    "torch",
    "torch._dynamo",
    "torch._inductor",
    "sympy",
    "kornia",
    "pandas",
    "numpy",
    "torchvision",
    "matplotlib",
    "scipy",
    "sklearn",
    "mlflow",
    "sqlalchemy",
    "alembic",
    "PIL",
]
MARKERS = {  # the first useful work: a run's first epoch, the test set's forward pass
    "train": ("ablationlab.train", "Run.begin_epoch"),
    "train_evaluate": ("ablationlab.train", "Run.begin_epoch"),
    "evaluate": ("ablationlab.evaluate", "predict"),
    "quick_train_job": ("ablationlab.train", "Run.begin_epoch"),
}
RECIPE = {"model": {"widths": [8, 16], "kernel_size": 3, "hidden": [32]}, "batch_size": 64}

# Run in the job's process: import the job's module (as `python -m ablationlab` does), wrap
# the marker function so its first call records the elapsed time, then run the command.
CHILD = """
import importlib, os, sys, time
module_name, attr = sys.argv[1], sys.argv[2]
module = importlib.import_module(module_name)
owner, name = (getattr(module, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (module, attr)
original = getattr(owner, name)
def marked(*args, **kwargs):
    if not os.path.exists(os.environ["MARK_FILE"]):
        with open(os.environ["MARK_FILE"], "w") as fh:
            fh.write(repr(time.time() - float(os.environ["MARK_T0"])))
    return original(*args, **kwargs)
setattr(owner, name, marked)
from ablationlab import __main__ as entry
finish = getattr(entry, "exit_without_teardown", sys.exit)  # as `python -m ablationlab` ends
finish(entry.main(sys.argv[3:]))
"""


def quick_recipe() -> dict:
    """The quick study's baseline recipe (presets/quick.yaml): what its train jobs train."""
    return yaml.safe_load((REPO / "presets" / "quick.yaml").read_text())["baseline"]


def job_args(job: str, work: Path, seed: int, epochs: int) -> list[str]:
    """The command line of ``job`` (after ``python -m ablationlab``) on the prepared data in ``work``."""
    run = work / "runs" / f"seed{seed}"
    if job == "quick_train_job":  # the pipeline's train job in the quick study: 3 seeds, train + evaluate
        stamp = time.time_ns()
        return [
            *("train", "--data", str(work / "data"), "--recipe", json.dumps(quick_recipe()), "--seed", "0", "1", "2"),
            *("--out", str(work / "quick" / str(stamp) / "seed{seed}")),
            *("--checkpoint-dir", str(work / "ckpt" / f"{stamp}-{{seed}}")),
            *("--device", "cpu", "--threads", "1", "--evaluate"),
        ]
    if job in ("train", "train_evaluate"):
        ckpt = work / "ckpt" / f"{seed}-{time.time_ns()}"
        return [
            "train",
            "--data",
            str(work / "data"),
            "--recipe",
            json.dumps({**RECIPE, "epochs": epochs}),
            "--seed",
            str(seed),
            "--out",
            str(run),
            "--checkpoint-dir",
            str(ckpt),
            "--device",
            "cpu",
            "--threads",
            "1",
            *(["--evaluate"] if job == "train_evaluate" else []),
        ]
    return ["evaluate", "--data", str(work / "data"), "--run", str(run), "--device", "cpu"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def timed(argv: list[str], job: str | None, work: Path) -> tuple[float, float, float | None]:
    """(total wall seconds, CPU seconds, seconds to the job's marker or None) of one fresh process."""
    mark = work / f"mark-{time.time_ns()}"
    if job is not None:
        argv = [sys.executable, "-c", CHILD, *MARKERS[job], *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run(
        argv,
        check=True,
        env={**env(), "MARK_FILE": str(mark), "MARK_T0": repr(t0)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return total, cpu, float(mark.read_text()) if mark.exists() else None


def import_times(argv: list[str]) -> dict[str, float]:
    """{module: cumulative import seconds} of one ``python -X importtime`` run; ``imports`` = their sum at top level."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ablationlab", *argv],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    found: dict[str, float] = {"imports": 0.0}
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", line)
        if not match:
            continue
        cumulative, depth, name = int(match[2]) / 1e6, len(match[3]), match[4]
        if depth == 1:  # imported by the job itself, not by another module
            found["imports"] += cumulative
        found.setdefault(name, cumulative)  # the first line of a module is where it was loaded
    return found


def measure(job: str, work: Path, repeats: int, epochs: int, torch_s: float) -> dict[str, float | None]:
    totals, cpus, startups, imports = [], [], [], []
    for rep in range(repeats):
        total, cpu, startup = timed(job_args(job, work, rep % 3, epochs), job, work)
        totals.append(total)
        cpus.append(cpu)
        startups.append(startup)
        imports.append(import_times(job_args(job, work, rep % 3, epochs)))
    result = {
        "startup_s": statistics.median(s for s in startups if s is not None) if any(startups) else None,
        "total_s": statistics.median(totals),
        "cpu_s": statistics.median(cpus),
        "imports_s": statistics.median(i["imports"] for i in imports),
    }
    for name in HEAVY:
        values = [i[name] for i in imports if name in i]
        result[name] = statistics.median(values) if values else None
    marked = [s for s in startups if s is not None]
    result["startup_min_s"] = min(marked) if marked else None
    result["total_min_s"] = min(totals)
    result["startup_x_torch"] = min(marked) / torch_s if marked else None
    result["total_x_torch"] = min(totals) / torch_s
    return result


def line(job: str, figures: dict[str, float | None]) -> str:
    return f"job={job} " + " ".join(f"{k}={'-' if v is None else f'{v:.2f}'}" for k, v in figures.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per job (median; default 5)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the benchmarked train job (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="job_overhead-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "ablationlab", "prepare", "--dataset", "digits", "--out", str(work / "data")],
            check=True,
            env=env(),
            stdout=subprocess.DEVNULL,
        )
        bare = statistics.median(timed([sys.executable, "-c", "pass"], None, work)[0] for _ in range(args.repeats))
        print(f"job=python total_s={bare:.2f}", flush=True)
        torch_s = min(timed([sys.executable, "-c", "import torch"], None, work)[0] for _ in range(args.repeats))
        print(f"job=import_torch total_min_s={torch_s:.2f}", flush=True)
        for seed in range(3):  # the runs that evaluate reads
            subprocess.run(
                [sys.executable, "-m", "ablationlab", *job_args("train", work, seed, args.epochs)],
                check=True,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for job in ("train", "evaluate", "train_evaluate"):
            print(line(job, measure(job, work, args.repeats, args.epochs, torch_s)), flush=True)
        quick = measure("quick_train_job", work, args.repeats, args.epochs, torch_s)
        print(line("quick_train_job", quick) + f" startup_share={quick['startup_s'] / quick['total_s']:.2f}")


if __name__ == "__main__":
    main()
