"""The pipeline's results tree: every folder, file and file list that the workflow and the stages share.

One place answers "where does a run's output live?"::

    results/data/<dataset>-<key>/     prepared tensors (DATA_FILES, meta.json, verified); <key>: data_key
    results/study/                    experiments.json, report.json (the study rule)
    results/runs/<exp>/seed<n>/       one run: TRAIN_FILES (train) and EVALUATE_FILES (evaluate)
    results/checkpoints/<exp>/seed<n> a run's last.pt (resume; not a declared output)
    results/adaptive/                 look<k>.json, seeds.json (adaptive seeding)
    results/summary/                  runs.csv, experiments.csv, diagnostics.csv; mlflow.csv (track)
    results/figures/                  the figures and figures.json
    results/mlflow.db                 the default MLflow store (its lock: results/mlflow.db.lock)
    results/mlflow.json, results/mlflow/target.json   the MLflow writer's record and target
    results/report/report.{ext}       the rendered report; reports/report.{ext} the published one
    results/logs/<rule>/..., results/benchmarks/train/...   logs and train jobs' wall times

A train job trains a block of seeds of one experiment (:func:`seed_blocks`: the study's seeds, all
or ``resources.<group>.seeds_per_job`` of them, or a block that adaptive seeding adds); its log and
benchmark files are named after the block:
``results/logs/train/{experiment}/seed0-1-2.log`` (``seed3.log`` for a block of one).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

_STEM = re.compile(r"seed(\d+(?:-\d+)*)")

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
DATA_ROOT = f"{RESULTS}/data"
STUDY_DIR = f"{RESULTS}/study"
STUDY_TABLE = f"{STUDY_DIR}/experiments.json"
STUDY_REPORT = f"{STUDY_DIR}/report.json"
RUNS_ROOT = f"{RESULTS}/runs"
CHECKPOINTS_ROOT = f"{RESULTS}/checkpoints"
ADAPTIVE_DIR = f"{RESULTS}/adaptive"
SEED_PLAN = f"{ADAPTIVE_DIR}/seeds.json"
SUMMARY_DIR = f"{RESULTS}/summary"
SUMMARY = [f"{SUMMARY_DIR}/runs.csv", f"{SUMMARY_DIR}/experiments.csv", f"{SUMMARY_DIR}/diagnostics.csv"]
MLFLOW_RECORD = f"{SUMMARY_DIR}/mlflow.csv"  # every run's MLflow id and link (track)
MLFLOW_DB = f"{RESULTS}/mlflow.db"  # the default tracking store (tracking.uri sqlite:///results/mlflow.db)
MLFLOW_INFO = f"{RESULTS}/mlflow.json"  # the study's MLflow experiment (track)
MLFLOW_TARGET = f"{RESULTS}/mlflow/target.json"  # tracking URI (redacted), MLflow experiment, study name
FIGURES_DIR = f"{RESULTS}/figures"
FIGURE_MANIFEST = f"{FIGURES_DIR}/figures.json"
RENDERED = f"{RESULTS}/report/report.{{ext}}"  # render_report's outputs
PUBLISHED = "reports/report.{ext}"  # publish_report's copies of RENDERED
REPORT_HTML = PUBLISHED.format(ext="html")
REPORT_PDF = PUBLISHED.format(ext="pdf")
TRAIN_LOGS = f"{LOGS}/train"
TRAIN_BENCHMARKS = f"{BENCHMARKS}/train"

# the files of a prepared data folder (prepare), besides meta.json and the `verified` marker
DATA_FILES = [f"{split}_{kind}.pt" for split in ("train", "val", "test") for kind in "xy"]
DATA_META = "meta.json"

# a run's files: written by train, then by evaluate (train --evaluate), in one run folder
TRAIN_FILES = ["recipe.json", "history.csv", "train.json", "weights_init.pt", "weights.pt", "weights_best.pt"]
EVALUATE_FILES = ["metrics.json", "confusion.csv", "predictions.csv", "misclassified.csv", "activations.npz"]
RUN_FILES = TRAIN_FILES + EVALUATE_FILES
# what each reader of a run folder reads of it
EVALUATE_READS = ["recipe.json", "train.json", "weights.pt", "weights_best.pt"]
SUMMARIZE_READS = ["train.json", "metrics.json", "history.csv"]
TRACK_READS = ["recipe.json", "train.json", "history.csv", "weights.pt", "metrics.json", "confusion.csv"]
TRACK_DIGESTED = ["recipe.json", "train.json", "history.csv", "metrics.json", "confusion.csv"]  # a run's digest
FIGURE_READS = [
    "history.csv",
    "train.json",
    "weights_init.pt",
    "weights.pt",
    "confusion.csv",
    "misclassified.csv",
    "activations.npz",
]
ADAPTIVE_READS = ["metrics.json"]


def run_dir(runs_root: str | Path, experiment: str, seed: int | str) -> Path:
    """A run's folder: ``<runs_root>/<experiment>/seed<seed>`` (``seed`` may be a ``{seed}`` pattern)."""
    return Path(runs_root) / experiment / f"seed{seed}"


def run_path(experiment: str, seed: int | str, name: str = "", runs_root: str = RUNS_ROOT) -> str:
    """``results/runs/<experiment>/seed<seed>[/<name>]`` as text (Snakemake paths and patterns)."""
    folder = f"{runs_root}/{experiment}/seed{seed}"
    return f"{folder}/{name}" if name else folder


def checkpoint_path(experiment: str, seed: int | str) -> str:
    """A run's checkpoint folder, ``results/checkpoints/<experiment>/seed<seed>``."""
    return run_path(experiment, seed, runs_root=CHECKPOINTS_ROOT)


def log_path(rule: str, name: str) -> str:
    """A job's log, ``results/logs/<rule>/<name>.log``."""
    return f"{LOGS}/{rule}/{name}.log"


def train_job_file(folder: str, experiment: str, seeds: Sequence[int] | str, ext: str) -> str:
    """A train job's log (``TRAIN_LOGS``, ``log``) or benchmark (``TRAIN_BENCHMARKS``, ``tsv``):
    ``<folder>/<experiment>/<job_stem(seeds)>.<ext>`` (``seeds`` a list or a stem)."""
    stem = seeds if isinstance(seeds, str) else job_stem(seeds)
    return f"{folder}/{experiment}/{stem}.{ext}"


def look_path(k: int | str) -> str:
    """Adaptive seeding's look ``k``: ``results/adaptive/look<k>.json``."""
    return f"{ADAPTIVE_DIR}/look{k}.json"


def data_key(options: Sequence[str], code: Iterable[str | Path]) -> str:
    """12 hex digits naming the prepared data: the prepare options that change the tensors and the
    content of the code that both writes and reads them (a change is another folder, so every reader
    of the data is planned again, a dry run included)."""
    digest = hashlib.sha256(json.dumps(list(options)).encode())
    for path in sorted(str(p) for p in code):
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()[:12]


def data_dir(dataset: str, key: str = "") -> str:
    """A prepared data folder, ``results/data/<dataset>-<key>`` (``<dataset>`` without a key)."""
    return f"{DATA_ROOT}/{dataset}-{key}" if key else f"{DATA_ROOT}/{dataset}"


def stale_data_dirs(keep: str | Path) -> list[Path]:
    """The prepared folders of ``keep``'s dataset other than ``keep`` (other options or code):
    ``results/data/<dataset>-<key>`` and ``results/data/<dataset>``."""
    keep = Path(keep)
    dataset = keep.name.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(dataset) + r"(-[0-9a-f]{12})?")
    return sorted(p for p in keep.parent.glob(f"{dataset}*") if p.is_dir() and p != keep and pattern.fullmatch(p.name))


def job_stem(seeds: Sequence[int]) -> str:
    """The file stem of the train job of ``seeds``: ``seed0-1-2``."""
    return "seed" + "-".join(str(int(s)) for s in seeds)


def stem_seeds(stem: str) -> list[int]:
    """The seeds a train job's file stem names ([] when it names none)."""
    match = _STEM.fullmatch(stem)
    return [int(s) for s in match.group(1).split("-")] if match else []


def job_log(logs_dir: str | Path, experiment: str, seed: int) -> Path | None:
    """The log of the train job that trained ``experiment``'s ``seed`` (None when there is none)."""
    for path in sorted(Path(logs_dir, experiment).glob("seed*.log")):
        if seed in stem_seeds(path.stem):
            return path
    return None


def seed_sequence(seeds: Sequence[int], max_seeds: int) -> list[int]:
    """Adaptive seeding's seeds: the study's, then the integers after the largest, ``max_seeds`` in all."""
    extra = range(max(seeds) + 1, max(seeds) + 1 + max(max_seeds - len(seeds), 0))
    return list(seeds) + list(extra)


def seed_blocks(seeds: Sequence[int], adaptive: dict | None = None, per_job: int | None = None) -> list[list[int]]:
    """The blocks of seeds that train jobs train: the study's ``seeds`` (in blocks of ``per_job``, or all
    in one), then, with adaptive seeding (its ``max_seeds`` and ``step``), each block of ``step`` seeds of
    :func:`seed_sequence` a look may add (an experiment's seeds are always the study's plus whole blocks:
    adaptive.next_seeds)."""
    size = per_job or len(seeds)
    blocks = [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]
    if adaptive:
        rest = seed_sequence(seeds, adaptive["max_seeds"])[len(seeds) :]
        blocks += [rest[i : i + adaptive["step"]] for i in range(0, len(rest), adaptive["step"])]
    return blocks
