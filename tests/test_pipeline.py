"""The Snakemake workflow, run for real (CLI) on the smoke preset in a temporary copy of the repo.

One complete run is shared by the dry-run tests (module fixture); each dry run parses the
jobs Snakemake plans (rule + experiment + seed wildcards). Also: lint, snakefmt, the
readable config errors, and the per-job GPU pool of workflow/scripts/gpu_slot.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from data_fixtures import http_server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ["Snakefile", "config.yaml", "workflow", "profiles", "presets", "src"]
STAGES = ("prepare_data",)  # with train_<group> (which also evaluates): the jobs that must not re-run needlessly


def _env() -> dict:
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "presets/smoke.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=timeout)


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


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A copy of the workflow after a complete smoke run."""
    work = copy_workflow(tmp_path_factory.mktemp("workflow"))
    start = time.monotonic()
    proc = snakemake(work)
    print(f"\nsmoke run: {time.monotonic() - start:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return work


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_run_outputs_exist_and_parse(done):
    table = json.loads((done / "results/study/experiments.json").read_text())
    ids = [e["id"] for e in table["experiments"]]
    assert ids == ["baseline", "batch_norm/bn", "dropout/p=0.5"] and table["seeds"] == [0]
    report = json.loads((done / "results/study/report.json").read_text())
    assert [g["id"] for g in report["groups"]] == ["batch_norm", "dropout"]
    (data,) = (done / "results/data").glob("digits-*")  # named after its options and code (layout.data_key)
    assert json.loads((data / "meta.json").read_text())["splits"]["train"] == 1293
    for exp in ids:
        run = done / "results/runs" / exp / "seed0"
        assert json.loads((run / "recipe.json").read_text()) == next(
            e["recipe"] for e in table["experiments"] if e["id"] == exp
        )
        assert json.loads((run / "train.json").read_text())["status"] in ("finished", "early_stopped")
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["n_test"] == 360
        assert len(pd.read_csv(run / "history.csv")) == 1
        assert (done / "results/logs/train" / exp / "seed0.log").stat().st_size > 0
        bench = pd.read_csv(done / "results/benchmarks/train" / exp / "seed0.tsv", sep="\t")
        assert bench["s"].iloc[0] > 0
        assert (done / "results/checkpoints" / exp / "seed0").is_dir()  # outside the declared outputs
    summary = pd.read_csv(done / "results/summary/experiments.csv")
    assert list(summary["experiment"]) == ids and (summary["n"] == 1).all()
    assert summary["test_acc_mean"].between(0, 1).all()
    diagnostics = pd.read_csv(done / "results/summary/diagnostics.csv")  # the curves' reading, per experiment
    assert list(diagnostics["experiment"]) == ids and diagnostics["reading"].str.len().gt(0).all()
    assert (done / "reports/report.html").stat().st_size > 0
    assert (done / "reports/report.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_complete_run_plans_nothing(done):
    proc = snakemake(done, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_changed_learning_rate_reruns_exactly_that_experiment(done):
    changed = overlay(done, "lr.yaml", lambda c: c["ablations"][0]["variants"]["bn"].update(optimizer={"lr": 0.02}))
    jobs = plan(done, "--configfile", "presets/smoke.yaml", changed)
    assert stage_jobs(jobs) == {("train_batch_norm", "batch_norm/bn", "0")}
    assert all(exp in (None, "batch_norm/bn") for _, exp, _ in jobs)  # downstream: aggregation only
    assert ("summarize", None, None) in jobs


@pytest.mark.slow
def test_added_seed_trains_only_the_new_seed(done, tmp_path):
    """Each experiment's job now trains seeds 0 and 1 (one process): seed 0 resumes at its last epoch from its
    checkpoint and trains nothing, so its files come back byte for byte; only seed 1 trains."""
    work = tmp_path / "work"
    shutil.copytree(done, work, symlinks=True)
    seeds = overlay(work, "seeds.yaml", lambda c: c.update(seeds=[0, 1]))
    jobs = plan(work, "--configfile", "presets/smoke.yaml", seeds)
    experiments = [
        ("train_baseline", "baseline"),
        ("train_batch_norm", "batch_norm/bn"),
        ("train_dropout", "dropout/p=0.5"),
    ]
    assert stage_jobs(jobs) == {(rule, exp, "0-1") for rule, exp in experiments}
    kept = ("recipe.json", "history.csv", "weights.pt", "weights_best.pt", "metrics.json", "predictions.csv")
    before = {
        (exp, n): (work / "results/runs" / exp / "seed0" / n).read_bytes() for _, exp in experiments for n in kept
    }
    proc = snakemake(work, "--configfile", "presets/smoke.yaml", seeds)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for (exp, name), content in before.items():
        assert (work / "results/runs" / exp / "seed0" / name).read_bytes() == content, (exp, name)
    for _, exp in experiments:
        log = (work / "results/logs/train" / exp / "seed0-1.log").read_text()
        assert "resuming from epoch" in log and "seed 0 epoch" not in log  # seed 0: no epoch trained
        assert "seed 1 epoch 1/" in log and (work / "results/runs" / exp / "seed1" / "metrics.json").is_file()


@pytest.mark.slow
def test_edited_notes_train_nothing(done):
    changed = overlay(done, "notes.yaml", lambda c: c["ablations"][0].update(notes="Other *notes*."))
    jobs = plan(done, "--configfile", "presets/smoke.yaml", changed)
    assert stage_jobs(jobs) == set() and all(exp is None for _, exp, _ in jobs)
    assert ("study", None, None) in jobs and ("summarize", None, None) not in jobs
    assert ("track", None, None) not in jobs  # the MLflow writer does not run: nothing is logged


TRAINED = {
    ("train_baseline", "baseline", "0"),
    ("train_batch_norm", "batch_norm/bn", "0"),
    ("train_dropout", "dropout/p=0.5", "0"),
}
REPORT = {("render_report", None, None), ("publish_report", None, None), ("all", None, None)}  # rendered, published
AFTER_TRAINING = {(rule, None, None) for rule in ("summarize", "figures", "track")} | REPORT
# an edited library module -> what a dry run plans: the stages that run it (ablationlab.stages), and what
# depends on their outputs
EDITED = {
    "train.py": TRAINED | AFTER_TRAINING,  # the training loop
    "evaluate.py": TRAINED | AFTER_TRAINING,  # the train jobs evaluate their runs
    "models.py": TRAINED | AFTER_TRAINING,  # figures too: it draws the models' filters
    "prepare.py": {("prepare_data", None, None), ("all", None, None)},  # a downloader or parser: no training
    "report.py": REPORT,
    "figure_plan.py": {("figures", None, None)} | REPORT,
    "track.py": {("track", None, None)} | REPORT,  # MLflow's record: the report's
    "tracking.py": set(),  # live logging: only train jobs run it, and it never changes a run's files
}


@pytest.mark.slow
@pytest.mark.parametrize("module", EDITED)
def test_an_edited_library_module_reruns_exactly_the_stages_that_run_it(done, module):
    edited = done / "src" / "ablationlab" / module
    original = edited.read_bytes()
    edited.write_bytes(original + b"\n# edited\n")
    try:
        jobs = plan(done)
    finally:
        edited.write_bytes(original)  # same content again: Snakemake's input checksums say unchanged
    assert set(jobs) == EDITED[module]
    again = snakemake(done, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr  # touched, not changed: nothing


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root`` but Snakemake's own state (.snakemake/)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and ".snakemake" not in p.relative_to(root).parts
    }


# what Snakemake itself prints on stderr for -n and --lint of a finished study
SNAKEMAKE_LINES = {
    "Using workflow specific profile profiles/default for setting default command line arguments.",
    "Config file config.yaml is extended by additional config specified via the command line.",
    "Congratulations, your workflow is in a good condition!",
}


@pytest.mark.slow
def test_parsing_changes_nothing_and_prints_nothing_of_its_own(done, tmp_path):
    """-n, --lint and --report read the workflow: no file changes, no line but Snakemake's (with GPU sharing on,
    which a run announces; a corrupted data cache: tests/test_faults.py)."""
    shared = overlay(done, "shared.yaml", lambda c: c.update(resources={"dropout": {"gpu": 1, "jobs_per_gpu": 2}}))
    before = _files(done)
    for args in (["-n"], ["--lint"]):
        proc = snakemake(done, "--configfile", "presets/smoke.yaml", shared, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(proc.stderr.splitlines()) <= SNAKEMAKE_LINES, proc.stderr
    proc = snakemake(done, "--configfile", "presets/smoke.yaml", shared, "--report", str(tmp_path / "report.zip"))
    assert proc.returncode == 0 and (tmp_path / "report.zip").is_file(), proc.stderr[-3000:]
    assert "GPU sharing" not in proc.stdout + proc.stderr
    assert _files(done) == before
    again = snakemake(done, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr  # and the study is still complete


@pytest.mark.slow
def test_group_target_plans_only_that_group(done):
    jobs = plan(done, "dropout", "--forcerun", "train_dropout")
    assert jobs == [("dropout", None, None), ("train_dropout", "dropout/p=0.5", "0")]


# --------------------------------------------------------------------------- bad config


BAD = {
    "unknown key": ("sedds: [1]\n", "invalid configuration: sedds: unknown key 'sedds' (did you mean 'seeds'?)"),
    "sweep over a missing key": (
        "ablations:\n  - {id: dropout, title: D, sweep: {key: model.dropuot, values: [0.5]}}\n",
        "invalid configuration: ablations[dropout].sweep.key: 'model.dropuot' does not exist in the recipe of base "
        "experiment 'baseline'",
    ),
    "batch larger than the train split": (
        "baseline: {batch_size: 5000}\n",
        "invalid configuration: baseline.batch_size: batch_size 5000 is larger than the train split of digits "
        "(1293 images)",
    ),
    "NaN learning rate (YAML .nan)": (
        "baseline: {optimizer: {lr: .nan}}\n",
        "invalid configuration: baseline.optimizer.lr: nan is not a finite number",
    ),
    "fractional val_size above 1": (
        "data: {val_size: 1.5}\n",
        "invalid configuration: data.val_size: 1.5 must be a fraction in (0, 1) or a whole count of images >= 1",
    ),
    "two problems at once": (
        "device: quantum\nthreads: 0\n",
        "invalid configuration:\n  device: unknown value 'quantum'; choose one of: auto, cpu, cuda, mps\n"
        "  threads: 0 is less than the minimum of 1",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_invalid_config_stops_before_any_job(done, case):
    text, message = BAD[case]
    (done / "bad.yaml").write_text(text)
    before = sorted(p for p in (done / "results").rglob("*"))
    proc = snakemake(done, "--configfile", "presets/smoke.yaml", "bad.yaml", "--forceall")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out and out.count("invalid configuration") == 1, out
    assert "Traceback" not in out and len(out.splitlines()) <= 6 + message.count("\n"), out
    assert sorted(p for p in (done / "results").rglob("*")) == before


# --------------------------------------------------------------------------- user text

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


@pytest.mark.slow
def test_text_with_braces_quotes_and_newlines_reaches_jobs_verbatim(tmp_path):
    work = copy_workflow(tmp_path / "work")
    hostile = overlay(
        work,
        "hostile.yaml",
        lambda c: hostile_text(c)["data"].update(root="raw {x} é", mirror="file:///mirror/{dataset}/"),
    )
    proc = snakemake(work, "-n", "-p", "--configfile", "presets/smoke.yaml", hostile)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    # paths and names in shell commands: shell-quoted, never formatted ({dataset} is a wildcard of prepare_data)
    assert "--root 'raw {x} é' --mirror 'file:///mirror/{dataset}/'" in out
    assert (
        out.count("--mlflow-experiment 'tracking.experiment x {word} {experiment} {seed} ") == 1
    )  # the single MLflow writer (track)


@contextlib.contextmanager
def _refused_server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as sock:  # a free port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield uri


@contextlib.contextmanager
def _web_server(tmp_path: Path) -> Iterator[str]:
    """`python -m http.server`'s handler: a web server, but not MLflow (it answers MLflow's POST with 501)."""
    (tmp_path / "www").mkdir()
    with http_server(tmp_path / "www") as (url, _):
        yield url.rstrip("/")


SERVER_PROBLEMS = {
    "refused": (
        _refused_server,
        "tracking.uri: MLflow server {uri} is not reachable ([Errno 111] Connection refused); start it, or "
        "fix tracking.uri (sqlite:///results/mlflow.db needs no server), then run the same command again",
    ),
    "not MLflow": (
        _web_server,
        "tracking.uri: {uri} is not an MLflow tracking server (HTTP 501 from {uri}/api/2.0/mlflow/experiments/search)",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SERVER_PROBLEMS)
def test_tracking_server_problem_stops_before_any_job(tmp_path, case):
    server, message = SERVER_PROBLEMS[case]
    work = copy_workflow(tmp_path / "work")
    with server(tmp_path) as uri:
        config = overlay(work, "server.yaml", lambda c: c.update(tracking={"uri": uri}))
        assert snakemake(work, "-n", "--configfile", "presets/smoke.yaml", config).returncode == 0  # a dry run plans
        start = time.monotonic()
        proc = snakemake(work, "--configfile", "presets/smoke.yaml", config, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and time.monotonic() - start < 60, out[-3000:]
    assert message.format(uri=uri) in out
    assert "Traceback" not in out and not (work / "results").exists()  # before the first job
    assert not list((work / ".snakemake" / "locks").glob("*"))  # and unlocked: fix it and run again


# --------------------------------------------------------------------------- code quality


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "--configfile", "presets/smoke.yaml"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- GPU pool


def _slot(count: int, tmp_path: Path, seconds: float, **env) -> subprocess.Popen:
    script = f"import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', '-'), flush=True); time.sleep({seconds})"
    full = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    full |= {"ABLATIONLAB_GPUS": "0,1,2", "ABLATIONLAB_GPU_LOCKS": str(tmp_path / "locks")} | env
    return subprocess.Popen(
        [sys.executable, str(REPO / "workflow/scripts/gpu_slot.py"), str(count), "--", sys.executable, "-c", script],
        env=full,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_jobs_get_their_own_gpus(tmp_path):
    first, second = _slot(1, tmp_path, 3), _slot(2, tmp_path, 3)
    got = [first.stdout.readline().strip(), second.stdout.readline().strip()]
    assert sorted(",".join(got).split(",")) == ["0", "1", "2"]  # disjoint, every GPU in use
    start = time.monotonic()
    third = _slot(1, tmp_path, 0)  # waits until a GPU is released
    assert third.stdout.readline().strip() in got[0].split(",") + got[1].split(",")
    assert time.monotonic() - start > 1.0
    for proc in (first, second, third):
        assert proc.wait(timeout=30) == 0


def test_gpu_slot_leaves_cpu_jobs_and_scheduler_allocations_alone(tmp_path):
    assert _slot(0, tmp_path, 0).communicate(timeout=30)[0].strip() == "-"
    assert _slot(1, tmp_path, 0, CUDA_VISIBLE_DEVICES="7").communicate(timeout=30)[0].strip() == "7"
    assert _slot(1, tmp_path, 0, ABLATIONLAB_GPUS="").communicate(timeout=30)[0].strip() == "-"
