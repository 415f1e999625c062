"""show: a finished study's results table (decided first), the report's path and the MLflow command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ablationlab import show
from ablationlab.__main__ import main
from ablationlab.summarize import EXPERIMENT_COLUMNS

# experiment, reference, test acc mean, std, Δ, verdict, status: in study order
ROWS = [
    ("baseline", None, 0.9731, 0.0042, None, None, "finished"),
    ("batch_norm/bn", "baseline", 0.9786, 0.0031, 0.0055, "undecided", "finished"),
    ("dropout/p=0.5", "baseline", 0.9512, 0.0101, -0.0219, "significant", "finished"),
    ("optimizer/adam", "baseline", 0.9730, 0.0040, -0.0001, "no_effect", "finished"),
    ("learning_rate/lr=10", "baseline", 0.1000, 0.0, -0.8731, "significant", "diverged"),
    ("init/kaiming", "baseline", 0.9700, None, -0.0031, "", "finished"),  # one seed: no test
]


def experiments(rows=ROWS) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            dict(zip(["experiment", "reference", "test_acc_mean", "test_acc_std", "delta_acc", "verdict", "status"], r))
            for r in rows
        ],
        columns=EXPERIMENT_COLUMNS,
    )
    return frame


def write_summary(root: Path, rows=ROWS) -> Path:
    summary = root / "results" / "summary"
    summary.mkdir(parents=True)
    experiments(rows).to_csv(summary / "experiments.csv", index=False)
    return summary


def test_the_table_puts_the_decided_first_in_study_order():
    text = show.table(experiments())
    lines = text.splitlines()
    assert lines[0].split() == ["experiment", "test", "acc.", "(%)", "Δ", "(pp)", "verdict"]
    assert [line.split()[0] for line in lines[1:]] == [
        "dropout/p=0.5",
        "optimizer/adam",
        "batch_norm/bn",
        "learning_rate/lr=10",
        "init/kaiming",
        "baseline",
    ]
    assert lines[1].split() == ["dropout/p=0.5", "95.1", "±", "1.0", "-2.2", "significant"]
    assert lines[2].split() == ["optimizer/adam", "97.3", "±", "0.4", "±0.0", "no", "effect"]
    assert lines[4].split() == ["learning_rate/lr=10", "10.0", "±", "0.0", "-87.3", "diverged"]  # over its test
    assert lines[5].split() == ["init/kaiming", "97.0", "-0.3", "no", "test"]  # one seed: no sd
    assert lines[6].split() == ["baseline", "97.3", "±", "0.4", "–", "reference"]
    # aligned columns: the numbers end where their header ends, the verdicts start where theirs does
    verdicts = ["significant", "no effect", "undecided", "diverged", "no test", "reference"]
    assert [line[lines[0].index("verdict") :] for line in lines[1:]] == verdicts
    assert {line.index("verdict") - 2 for line in lines[:1]} == {
        len(line.removesuffix(v).rstrip()) for line, v in zip(lines[1:], verdicts)
    }


def test_a_summary_without_a_column_is_one_line_naming_it(tmp_path):
    summary = write_summary(tmp_path)
    frame = pd.read_csv(summary / "experiments.csv").drop(columns=["verdict"])
    frame.to_csv(summary / "experiments.csv", index=False)
    with pytest.raises(show.ShowError, match=r"experiments\.csv: missing column 'verdict'$"):
        show.summary(summary)


def test_the_summary_names_the_report_and_the_mlflow_command(tmp_path):
    summary = write_summary(tmp_path)
    report, info = tmp_path / "reports" / "report.html", tmp_path / "results" / "mlflow.json"
    assert show.summary(summary, report, info) == show.table(experiments())  # neither exists yet
    report.parent.mkdir()
    report.write_text("<html></html>")
    info.write_text(json.dumps({"tracking_uri": "sqlite:///results/mlflow.db", "url": "#/experiments/1"}))
    lines = show.summary(summary, report, info).splitlines()
    assert lines[-2:] == [
        f"report: {report}",
        "MLflow: mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000",
    ]
    info.write_text(json.dumps({"tracking_uri": "https://***@mlflow.example.org/", "url": "#/experiments/7?x=1"}))
    assert (
        show.summary(summary, report, info).splitlines()[-1] == "MLflow: https://mlflow.example.org/#/experiments/7?x=1"
    )


def test_the_report_is_current_when_no_older_than_the_summary(tmp_path):
    summary = write_summary(tmp_path)
    report = tmp_path / "report.html"
    assert not show.report_current(report, summary)
    report.write_text("x")
    os.utime(report, (1_000, 1_000))
    assert not show.report_current(report, summary)  # the summary changed after it was rendered
    os.utime(summary / "experiments.csv", (900, 900))
    assert show.report_current(report, summary)


def test_the_cli_prints_the_table_of_the_study_in_results(tmp_path, monkeypatch, capsys):
    write_summary(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["show"]) == 0
    assert capsys.readouterr().out == show.table(experiments()) + "\n"


def test_the_cli_without_a_finished_study_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ablationlab", "show"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        "error: no finished study in results/: run snakemake first (results/summary/experiments.csv not found)\n"
    )
