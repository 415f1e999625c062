"""Planning time of a large study: ``snakemake -n`` on a generated study of ≥ 300 jobs.

Copies the workflow (Snakefile, config.yaml, workflow/, profiles/, presets/, src/) into a
temporary directory, writes an overlay of ``presets/smoke.yaml`` with ``--groups`` sweep
groups of ``--values`` learning rates each (plus the baseline) and ``--seeds`` seeds on
digits, and times ``snakemake -n --cores 2`` (nothing exists yet: every job is planned)
``--repeats`` times. Prints one line per repeat, then exactly

    experiments=<n> train_jobs=<n> jobs=<n> plan_seconds_median=<s>

where ``jobs`` is Snakemake's own job count of the plan. ``--profile`` adds a cProfile of
one planning run (top functions by cumulative time) to find where the time goes.

    python benchmarks/plan_study.py [--groups 10] [--values 10] [--seeds 3] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = ["Snakefile", "config.yaml", "workflow", "profiles", "presets", "src"]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def study_config(groups: int, values: int, seeds: int) -> dict:
    """presets/smoke.yaml with ``groups`` × ``values`` learning-rate sweep experiments and ``seeds`` seeds."""
    cfg = yaml.safe_load((REPO / "presets" / "smoke.yaml").read_text())
    cfg["study"] = {"name": "plan_benchmark", "title": "Planning benchmark"}
    cfg["seeds"] = list(range(seeds))
    cfg["ablations"] = [
        {
            "id": f"g{g:02d}",
            "title": f"Group {g}",
            "sweep": {
                "key": "optimizer.lr",
                "label": "lr",
                "values": [round(0.001 * (g * values + v + 1), 6) for v in range(values)],
            },
        }
        for g in range(groups)
    ]
    return cfg


def make_workdir(root: Path, cfg: dict) -> Path:
    work = root / "study"
    work.mkdir()
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, work / name)
    (work / "plan.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def command(*extra: str) -> list[str]:
    return [str(SNAKEMAKE), "-n", "--cores", "2", "--configfile", "presets/smoke.yaml", "plan.yaml", *extra]


def env() -> dict:
    return os.environ | {"PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}


def plan_once(work: Path) -> tuple[float, int, int]:
    """Seconds of one dry run, Snakemake's total job count and the number of train jobs."""
    start = time.perf_counter()
    proc = subprocess.run(command(), cwd=work, env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{out[-4000:]}")
    stats = out.split("Job stats:", 2)[1] if "Job stats:" in out else ""  # the first of the (repeated) tables
    total = re.search(r"^total\s+(\d+)", stats, flags=re.M)
    train = sum(int(n) for n in re.findall(r"^train_\w+\s+(\d+)", stats, flags=re.M))
    return seconds, int(total[1]) if total else -1, train


def profile_once(work: Path, top: int = 40) -> None:
    """cProfile of one planning run (``python -m cProfile -m snakemake -n ...``)."""
    stats = Path(os.environ.get("PLAN_PROF", work / "plan.prof"))
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "snakemake", *command()[1:]],
        cwd=work,
        env=env(),
        capture_output=True,
        text=True,
    )
    import pstats

    for order in ("cumulative", "tottime"):
        pstats.Stats(str(stats)).sort_stats(order).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10, help="sweep groups (default 10)")
    parser.add_argument("--values", type=int, default=10, help="sweep values per group (default 10)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per experiment (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed dry runs (default 3; the median is reported)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one dry run")
    args = parser.parse_args(argv)

    cfg = study_config(args.groups, args.values, args.seeds)
    experiments = 1 + args.groups * args.values
    with tempfile.TemporaryDirectory(prefix="plan_study_") as tmp:
        work = make_workdir(Path(tmp), cfg)
        times = []
        for i in range(args.repeats):
            seconds, jobs, train = plan_once(work)
            times.append(seconds)
            print(f"run {i + 1}: {seconds:.2f} s ({jobs} jobs, {train} train jobs)", flush=True)
        if args.profile:
            profile_once(work)
    median = statistics.median(times)
    print(f"experiments={experiments} train_jobs={train} jobs={jobs} plan_seconds_median={median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
