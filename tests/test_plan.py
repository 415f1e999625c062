"""The plan is right the first time, from any earlier state (the real workflow, smoke preset, slow).

Three commands: a complete run, then a group target after its sweep gained two values
(`snakemake dropout`: it trains only the new runs, the study table is left as it was), then the
whole study, which must bring the summary, the MLflow record, the figures and the report up to
date in one run. And what Snakemake plans from other partial states: after the group target, with
summarize killed mid-run, with a summary file deleted. The third command must not fail in
render_report on a summary table that lacks the added experiments, nor take the last report with it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from helpers import BIN, copy_tree, copy_workflow, jobs_of, kill_tree, overlay, plan, snakemake, venv_env

pytestmark = pytest.mark.slow

GROWN = "grown.yaml"  # presets/smoke.yaml with the dropout sweep grown from [0.5] to three values
NEW = ["dropout/p=0.3", "dropout/p=0.2"]
AFTER_TRAINING = {"study", "summarize", "track", "figures", "render_report", "publish_report"}


def _grow(cfg: dict) -> None:
    cfg["ablations"][1]["sweep"]["values"] = [0.5, 0.3, 0.2]  # the dropout group's


def _planned(work: Path, *targets: str) -> set[str]:
    """The rules of the jobs a dry run of the grown study (or of ``targets``) plans."""
    jobs = plan(work, "--configfile", "presets/smoke.yaml", GROWN, *(["--", *targets] if targets else []))
    return {rule for rule, _, _ in jobs}


def _running(proc: subprocess.Popen, word: str) -> bool:
    """Whether a process started by ``proc`` has ``word`` as an argument (python -m ablationlab <word>)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if word in child.cmdline():
                return True
    return False


def _ran(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", proc.stdout + proc.stderr, flags=re.M)


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    """After the first two commands: a complete run, then `snakemake dropout` with two more sweep values."""
    work = copy_workflow(tmp_path_factory.mktemp("plan") / "study")
    first = snakemake(work)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    overlay(work, GROWN, _grow)
    second = snakemake(work, GROWN, "--", "dropout")
    assert second.returncode == 0, (second.stdout + second.stderr)[-5000:]
    assert sorted(_ran(second)) == ["dropout", "train_dropout", "train_dropout"]  # the new runs only
    return work


@pytest.fixture(scope="module")
def third(grown, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The third command, once, on a copy of ``grown``."""
    work = copy_tree(grown, tmp_path_factory.mktemp("third") / "study")
    return work, snakemake(work, GROWN)


def test_after_a_group_target_the_plan_has_every_stage_after_training(grown):
    assert _planned(grown) == AFTER_TRAINING | {"all"}  # nothing trains again
    assert _planned(grown, "summarize") == {"study", "summarize"}


def test_the_third_command_brings_everything_up_to_date_in_one_run(third):
    work, proc = third
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert set(_ran(proc)) >= AFTER_TRAINING and not any(r.startswith("train_") for r in _ran(proc))
    ids = [e["id"] for e in json.loads((work / "results/study/experiments.json").read_text())["experiments"]]
    assert set(NEW) <= set(ids)
    assert list(pd.read_csv(work / "results/summary/experiments.csv")["experiment"]) == ids
    assert set(pd.read_csv(work / "results/summary/mlflow.csv", dtype=str)["experiment"]) == set(ids)
    html = (work / "reports/report.html").read_text(encoding="utf-8")
    assert all(f">{exp}<" in html for exp in ids) and "lacks" not in html
    again = snakemake(work, GROWN, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_killed_summarize_is_planned_again_with_everything_after_it(grown, tmp_path):
    work = copy_tree(grown, tmp_path / "study")
    report = (work / "reports/report.html").read_bytes()
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "presets/smoke.yaml", GROWN]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=venv_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not _running(proc, "summarize"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.02)
        kill_tree(proc)  # Snakemake and summarize mid-run, as a power loss would
    unlock = subprocess.run([*cmd, "--unlock"], cwd=work, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    # study too when its report.json job had not finished yet: the two study jobs run side by side
    assert AFTER_TRAINING - {"study"} | {"all"} <= _planned(work) <= AFTER_TRAINING | {"all"}
    assert (work / "reports/report.html").read_bytes() == report  # the last good report is still there


def test_new_data_options_plan_every_train_job(third):
    work = third[0]
    ids = [e["id"] for e in json.loads((work / "results/study/experiments.json").read_text())["experiments"]]

    def new_split(cfg: dict) -> None:
        _grow(cfg)
        cfg["data"]["val_size"] = 0.2

    overlay(work, "val.yaml", new_split)
    jobs = plan(work, "--configfile", "presets/smoke.yaml", "val.yaml")
    assert {exp for rule, exp, _ in jobs if rule.startswith("train_")} == set(ids)


def test_a_deleted_summary_file_is_planned_again_with_everything_after_it(third, tmp_path):
    work = copy_tree(third[0], tmp_path / "study")
    (work / "results/summary/experiments.csv").unlink()
    assert _planned(work) == AFTER_TRAINING - {"study"} | {"all"}


def _new_val_size(work: Path) -> list[str]:
    overlay(work, "val.yaml", lambda cfg: (_grow(cfg), cfg["data"].update(val_size=0.3)))
    return ["val.yaml"]


def _edited_data_code(work: Path) -> list[str]:
    with open(work / "src/ablationlab/data.py", "a", encoding="utf-8") as module:
        module.write("# a comment\n")
    return [GROWN]


@pytest.mark.parametrize("change", [_new_val_size, _edited_data_code], ids=["val_size", "data.py"])
def test_after_a_data_change_the_dry_run_lists_the_jobs_the_run_executes(third, tmp_path, change):
    work = copy_tree(third[0], tmp_path / "study")
    old = {p.name for p in (work / "results/data").iterdir()}
    args = change(work)
    planned = set(plan(work, "--configfile", "presets/smoke.yaml", *args))
    proc = snakemake(work, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert jobs_of(out) == planned, out[-5000:]
    ids = [e["id"] for e in json.loads((work / "results/study/experiments.json").read_text())["experiments"]]
    assert {exp for rule, exp, _ in planned if rule.startswith("train_")} == set(ids)
    assert AFTER_TRAINING - {"study"} <= {rule for rule, _, _ in planned}
    # the run prepared its data in a folder of its own and removed the one it replaced
    (data,) = (work / "results/data").iterdir()
    assert data.name not in old and re.search(rf"removed results/data/{next(iter(old))}: ", out)
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, *args, "-n"))
