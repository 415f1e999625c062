"""Helpers shared by the workflow tests: the real Snakemake CLI on a copy of the repository (run, dry-run
plan, preset overlays), hostile free text, process-tree stops; and a small real study on digits.

A module of its own (not a test file): test modules import it; conftest.py serves its study as a fixture.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from ablationlab import evaluate, io, study, train

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ["Snakefile", "config.yaml", "workflow", "profiles", "presets", "src"]
STAGES = ("prepare_data",)  # with train_<group> (which also evaluates): the jobs that must not re-run needlessly


def venv_env() -> dict:
    """The environment with this interpreter's bin folder (snakemake, snakefmt) first on PATH."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Snakemake run in ``workdir`` on the smoke preset (2 cores), ``args`` appended; output captured."""
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "presets/smoke.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, env=venv_env(), capture_output=True, text=True, timeout=timeout)


def jobs_of(log: str) -> set[tuple[str, str | None, str | None]]:
    """(rule, experiment, seeds) of every job a Snakemake log (or dry run) announces; a train job's seeds are
    those its log file names (``results/logs/train/<experiment>/seed0-1.log``: "0-1")."""
    jobs: list[list] = []
    for line in log.splitlines():
        if match := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append([match[1], None, None])
        elif jobs and line.strip().startswith("wildcards:"):
            wildcards = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
            jobs[-1][1] = wildcards.get("experiment")
        elif jobs and (match := re.match(r"^\s+log: \S+/seed([\d-]+)\.log$", line)):
            jobs[-1][2] = match[1]
    return {tuple(j) for j in jobs}


def plan(workdir: Path, *args: str) -> list[tuple[str, str | None, str | None]]:
    """Jobs of a dry run: sorted (rule, experiment, seed)."""
    proc = snakemake(workdir, "-n", *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return sorted(jobs_of(out))


def stage_jobs(jobs) -> set:
    """The training-side jobs of a plan (train_<group>, prepare_data)."""
    return {j for j in jobs if j[0].startswith("train_") or j[0] in STAGES}


def copy_workflow(dest: Path, names=COPIED) -> Path:
    """The workflow (``names`` of the repository, default COPIED) copied into ``dest``: a directory of its own."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def overlay(workdir: Path, name: str, change) -> str:
    """A --configfile overlay: presets/smoke.yaml changed by ``change`` (lists replace, so it is complete)."""
    cfg = yaml.safe_load((workdir / "presets" / "smoke.yaml").read_text())
    change(cfg)
    (workdir / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def copy_tree(src: Path, dst: Path) -> Path:
    """``src`` copied to ``dst`` (symlinks kept, caches left out): a study folder of its own."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL Snakemake and every process it started (the whole tree, as a crash or an OOM kill would)."""
    parent = psutil.Process(proc.pid)
    tree = [parent] + parent.children(recursive=True)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    return [p.pid for p in tree]


# braces (Snakemake wildcards: {seed} and {experiment} are real ones), LaTeX, quotes, a
# backslash, shell syntax, HTML, non-ASCII and a newline: passed through verbatim everywhere
HOSTILE = "x {word} {experiment} {seed} $\\frac{1}{2}$ \"dq\" 'sq' \\back $HOME `id` <b>é中</b>\nline 2"


def hostile_text(cfg: dict) -> dict:
    """``cfg`` with HOSTILE (tagged by key) in every free-text key (ids and study.name are constrained)."""
    cfg["study"].update(title=f"study.title {HOSTILE}", author=f"study.author {HOSTILE}")
    cfg["report"] = {"title": f"report.title {HOSTILE}"}
    cfg["tracking"] = {"experiment": f"tracking.experiment {HOSTILE}"}
    for group in cfg["ablations"]:
        group.update(title=f"{group['id']}.title {HOSTILE}", notes=f"{group['id']}.notes {HOSTILE}")
    return cfg


# --------------------------------------------------------------------------- a small real study

XSS_NOTES = (
    "Does BN help? <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
    "[click](javascript:alert(1)) and **bold**"
)

# 7 experiments × 2 seeds on digits, resolved by study.load as any configuration is: the report's groups and
# sections (markdown notes with markup to escape, a sweep, early stopping, augmentation, a diverging lr)
STUDY_CONFIG = {
    "study": {"name": "test-study", "title": "Digits <ablation> study"},
    "data": {"dataset": "digits"},
    "seeds": [0, 1],
    "tracking": {"uri": "http://alice:s3cret@127.0.0.1:5000"},  # credentials that must not reach the report
    "baseline": {
        "model": {"widths": [8, 16], "hidden": [32], "kernel_size": 3},
        "optimizer": {"name": "momentum", "lr": 0.05},
        "batch_size": 64,
        "epochs": 2,
    },
    "ablations": [
        {
            "id": "batch_norm",
            "title": "Batch normalisation",
            "notes": XSS_NOTES,
            "variants": {"bn": {"model": {"batch_norm": True}}},
        },
        {
            "id": "dropout",
            "title": "Dropout sweep",
            "notes": "Dropout in the head, **p** swept.",
            "sweep": {"key": "model.dropout", "label": "p", "values": [0.2, 0.5]},
        },
        {
            "id": "early_stopping",
            "title": "Early stopping",
            "variants": {
                "patience=1": {"epochs": 4, "early_stopping": {"enabled": True, "patience": 1, "monitor": "val_acc"}}
            },
        },
        {
            "id": "augmentation",
            "title": "Augmentation",
            "notes": "",
            "variants": {"hflip": {"augment": [{"name": "hflip", "p": 0.5}]}},
        },
        {
            "id": "optimizer",
            "title": "Learning rate too high",
            "notes": "lr 1000 must diverge.",
            "variants": {"lr=1000": {"optimizer": {"name": "sgd", "lr": 1000.0}}},
        },
    ],
}


def make_study(root: Path, data_dir: Path) -> dict:
    """STUDY_CONFIG resolved by ``study.load`` into root/study/{experiments,report}.json, and every run
    trained and evaluated by the real stages into root/runs; returns the experiment table."""
    resolved = study.load(STUDY_CONFIG)
    io.write_json(root / "study" / "experiments.json", resolved.experiments)
    io.write_json(root / "study" / "report.json", resolved.report)
    for exp in resolved.experiments["experiments"]:
        for seed in resolved.experiments["seeds"]:
            out = root / "runs" / exp["id"] / f"seed{seed}"
            checkpoints = root / "checkpoints" / exp["id"] / f"seed{seed}"
            train.train(data_dir, exp["recipe"], seed, out, checkpoint_dir=checkpoints, device="cpu", threads=1)
            evaluate.evaluate(data_dir, out, device="cpu")
    return resolved.experiments


@contextlib.contextmanager
def immutable(path: Path):
    """``path`` made immutable (chattr +i: even root cannot replace, remove or write it)."""
    if os.geteuid() != 0 or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i needs root and a file system that supports it")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
