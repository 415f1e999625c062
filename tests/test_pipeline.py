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
from data_fixtures import http_server
from helpers import BIN, REPO, copy_workflow, hostile_text, overlay, plan, snakemake, stage_jobs, venv_env

# the output of each complete smoke run (`done`), by its folder
RUN_OUTPUT: dict[Path, subprocess.CompletedProcess] = {}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A copy of the workflow after a complete smoke run (its output: RUN_OUTPUT)."""
    work = copy_workflow(tmp_path_factory.mktemp("workflow"))
    start = time.monotonic()
    proc = snakemake(work)
    print(f"\nsmoke run: {time.monotonic() - start:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    RUN_OUTPUT[work] = proc
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
def test_a_run_ends_on_the_results_table_the_report_and_the_mlflow_command(done):
    out = RUN_OUTPUT[done].stdout
    shown = subprocess.run(
        [sys.executable, "-m", "ablationlab", "show"],
        cwd=done,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert out.endswith(shown.stdout) and shown.stdout.strip()  # the same table on demand
    lines = shown.stdout.splitlines()
    assert lines[0].split()[0] == "experiment" and "verdict" in lines[0]
    assert {line.split()[0] for line in lines[1:4]} == {"baseline", "batch_norm/bn", "dropout/p=0.5"}
    assert lines[4:] == [
        "report: reports/report.html",
        "MLflow: mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000",
    ]


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
def test_seeds_per_job_trains_a_groups_seeds_in_jobs_of_their_own(done, tmp_path):
    """resources.dropout.seeds_per_job: 1 with seeds [0, 1]: dropout's seed 1 trains in a job of its own
    (train_dropout_more1) while its seed 0 (trained alone already) stays; the other groups train both
    seeds in one job; the report lists each job's wall time."""
    work = tmp_path / "work"
    shutil.copytree(done, work, symlinks=True)
    split = overlay(
        work, "split.yaml", lambda c: c.update(seeds=[0, 1]) or c["resources"].update(dropout={"seeds_per_job": 1})
    )
    jobs = plan(work, "--configfile", "presets/smoke.yaml", split)
    assert stage_jobs(jobs) == {
        ("train_baseline", "baseline", "0-1"),
        ("train_batch_norm", "batch_norm/bn", "0-1"),
        ("train_dropout_more1", "dropout/p=0.5", "1"),
    }
    kept = (work / "results/runs/dropout/p=0.5/seed0/weights.pt").read_bytes()
    proc = snakemake(work, "--configfile", "presets/smoke.yaml", split)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (work / "results/runs/dropout/p=0.5/seed0/weights.pt").read_bytes() == kept
    assert (work / "results/runs/dropout/p=0.5/seed1/metrics.json").is_file()
    html = (work / "reports/report.html").read_text()
    # the jobs of the study as it is now: baseline's former one-seed job is not among them
    jobs = set(re.findall(r'<td class="text mono">([^<]+/seed[\d-]+)</td>', html))
    assert {"dropout/p=0.5/seed0", "dropout/p=0.5/seed1", "baseline/seed0-1"} <= jobs and "baseline/seed0" not in jobs
    again = snakemake(work, "-n", "--configfile", "presets/smoke.yaml", split)
    assert "Nothing to be done" in again.stdout + again.stderr
    # splitting batch_norm's trained seeds too: its two new jobs resume each run at its last epoch,
    # train nothing and give the same files back
    both = overlay(
        work,
        "both.yaml",
        lambda c: (
            c.update(seeds=[0, 1])
            or c["resources"].update(dropout={"seeds_per_job": 1}, batch_norm={"seeds_per_job": 1})
        ),
    )
    jobs = plan(work, "--configfile", "presets/smoke.yaml", both)
    assert stage_jobs(jobs) == {
        ("train_batch_norm", "batch_norm/bn", "0"),
        ("train_batch_norm_more1", "batch_norm/bn", "1"),
    }
    runs = work / "results/runs/batch_norm/bn"
    before = {(s, n): (runs / s / n).read_bytes() for s in ("seed0", "seed1") for n in ("weights.pt", "metrics.json")}
    proc = snakemake(work, "--configfile", "presets/smoke.yaml", both)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert {key: (runs / key[0] / key[1]).read_bytes() for key in before} == before
    for seed in ("0", "1"):
        log = (work / f"results/logs/train/batch_norm/bn/seed{seed}.log").read_text()
        assert "resuming from epoch" in log and f"seed {seed} epoch" not in log


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
    "live_mlflow.py": set(),  # live logging: only train jobs run it, and it never changes a run's files
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


def test_config_error_is_its_message_alone(tmp_path):
    work = copy_workflow(tmp_path / "work")
    (work / "bad.yaml").write_text("sedds: [1]\n")
    proc = snakemake(work, "-n", "--configfile", "presets/smoke.yaml", "bad.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("invalid configuration: sedds: unknown key 'sedds' (did you mean 'seeds'?)"), out
    assert 'File "' not in out and "Error in file" not in out, out  # no line that reads like a traceback


STUDY_FILES = ["results/study/experiments.json", "results/study/report.json"]


@pytest.mark.slow
def test_a_changed_config_is_reported_by_the_keys_that_changed(tmp_path):
    work = copy_workflow(tmp_path / "work")
    assert snakemake(work, "--", *STUDY_FILES).returncode == 0

    def change(cfg):
        bn = next(g for g in cfg["ablations"] if g["id"] == "batch_norm")
        bn["notes"] = "Noted: " + "n" * 2000
        bn["variants"]["bn"]["optimizer"] = {"lr": 0.02}

    changed = overlay(work, "changed.yaml", change)
    proc = snakemake(work, "-n", "--configfile", changed, "--", *STUDY_FILES)
    out = proc.stdout + proc.stderr
    reasons = [line for line in out.splitlines() if line.strip().startswith("reason:")]
    assert proc.returncode == 0 and len(reasons) == 2, out
    assert "experiments[batch_norm/bn].recipe.optimizer" in reasons[0] + reasons[1], out
    assert "groups[batch_norm].notes" in reasons[0] + reasons[1], out
    assert "Noted" not in out and "0.02" not in out and all(len(r) < 800 for r in reasons), out  # keys, not values
    unchanged = snakemake(work, "-n", "--", *STUDY_FILES)
    assert unchanged.returncode == 0 and "Nothing to be done" in unchanged.stdout + unchanged.stderr


# --------------------------------------------------------------------------- user text


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
        env=venv_env(),
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
