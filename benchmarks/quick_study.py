"""The quick study end to end, as a newcomer runs it: a fresh clone, the README's run command, timed.

For each of ``--clones`` fresh clones of this repository (``--ref``, default HEAD) it measures, in
the same run so that a reader on another machine can scale the figures:

- ``import_torch_s``: the yardstick, a bare ``python -c "import torch"`` (minimum of 3);
- ``wall_s``: ``snakemake --cores 2 --configfile presets/quick.yaml``, start to end, and
  ``ratio`` = wall_s / import_torch_s;
- ``train_jobs``, ``median_job_s``, ``longest_job_s`` (and which): the train jobs' wall times
  (Snakemake's benchmark files, results/benchmarks/train/);
- ``tail_s``, ``tail_share``: from the end of the last train job to the end of the run;
- the tail's stages (``summarize_s``, ``track_s``, ``figures_s``, ``report_s``): each job's wall time,
  from Snakemake's record of its output (``.snakemake/metadata``: start and end of the job), and
  ``after_report_s``: from the end of the report job to the end of the run (publishing, the results table).

Then the spread (min–max) over the clones. Run it on an idle machine: every figure moves with load.

    python benchmarks/quick_study.py [--clones 3] [--ref HEAD] [--cores 2] [--keep DIR]

It uses the Python environment it runs in (the README's `.venv`): the clone's library comes first
through the Snakefile (PYTHONPATH), so only the clone's files differ between refs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ablationlab import layout  # the results tree's paths, from the module that owns them

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def import_torch_s(repeats: int = 3) -> float:
    """The yardstick: the fastest of ``repeats`` bare ``import torch`` processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def train_jobs(work: Path) -> list[tuple[str, float, float]]:
    """(job, wall seconds, end time) of every train job, from Snakemake's benchmark files."""
    jobs = []
    folder = work / layout.TRAIN_BENCHMARKS
    for tsv in sorted(folder.rglob("*.tsv")):
        with tsv.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        jobs.append((str(tsv.relative_to(folder)), float(row["s"]), tsv.stat().st_mtime))
    return jobs


# a file each tail stage writes, whose Snakemake record gives the stage's job start and end
STAGE_OUTPUTS = {
    "summarize": layout.SUMMARY[0],
    "track": layout.MLFLOW_INFO,
    "figures": layout.FIGURE_MANIFEST,
    "report": layout.RENDERED.format(ext="html"),
}


def job_span(work: Path, output: str) -> tuple[float, float]:
    """(start, end) epoch seconds of the job that wrote ``output``, from Snakemake's metadata."""
    name = base64.urlsafe_b64encode(output.encode()).decode()
    record = json.loads((work / ".snakemake/metadata" / name).read_text())
    return record["starttime"], record["endtime"]


def one_clone(ref: str, cores: int, keep: Path | None = None) -> dict:
    """Clone, run the quick study, measure; the clone is removed unless ``keep`` names where it stays."""
    with tempfile.TemporaryDirectory(prefix="quick-study-") as tmp:
        work = keep or Path(tmp) / "ablationlab"
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "-q", ref], check=True)
        yardstick = import_torch_s()
        env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        cmd = ["snakemake", "--cores", str(cores), "--configfile", "presets/quick.yaml", "--quiet", "all"]
        start = time.perf_counter()
        wall_start = time.time()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        end = wall_start + wall
        if proc.returncode:
            sys.exit(f"quick study failed in {work}:\n{proc.stderr[-3000:]}")
        jobs = train_jobs(work)
        walls = [w for _, w, _ in jobs]
        longest = max(jobs, key=lambda j: j[1])
        tail = end - max(e for _, _, e in jobs)
        spans = {stage: job_span(work, output) for stage, output in STAGE_OUTPUTS.items()}
        return {
            "import_torch_s": yardstick,
            "wall_s": wall,
            "ratio": wall / yardstick,
            "train_jobs": len(jobs),
            "median_job_s": statistics.median(walls),
            "longest_job_s": longest[1],
            "longest_job": longest[0],
            "tail_s": tail,
            "tail_share": tail / wall,
            **{f"{stage}_s": e - s for stage, (s, e) in spans.items()},
            "after_report_s": end - spans["report"][1],
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=int, default=3)
    parser.add_argument("--ref", default="HEAD")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the clones as KEEP/clone-<n> (to compare their results)")
    args = parser.parse_args(argv)
    ref = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"ref={ref} cores={args.cores} load={os.getloadavg()[0]:.2f}")
    rows = []
    for i in range(args.clones):
        row = one_clone(ref, args.cores, args.keep / f"clone-{i + 1}" if args.keep else None)
        rows.append(row)
        print(
            f"clone={i + 1} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    for key in (
        ("import_torch_s", "wall_s", "ratio", "median_job_s", "longest_job_s", "tail_s", "tail_share")
        + tuple(f"{stage}_s" for stage in STAGE_OUTPUTS)
        + ("after_report_s",)
    ):
        values = [r[key] for r in rows]
        print(f"{key}: {min(values):.2f}–{max(values):.2f}")


if __name__ == "__main__":
    main()
