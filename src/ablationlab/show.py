"""Command ``show``: a finished study's results on the console, as the end of a run prints them.

One row per experiment of ``experiments.csv``: test accuracy (mean ± sd over the seeds, %), Δ
against its reference (pp) and the verdict, the decided ones first (significant, then no effect;
then undecided, diverged, untested, and the references); then where the report is and how to open
the MLflow store (``mlflow ui --backend-store-uri ...`` for a local store, from ``mlflow.json``)::

    python -m ablationlab show                     # from the repository root, after snakemake
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ablationlab import layout
from ablationlab.formats import VERDICT_NAMES, diverged, pct, pp
from ablationlab.formats import missing as _missing
from ablationlab.mlflow_store import split_credentials
from ablationlab.summarize import read_table

COLUMNS = ["experiment", "reference", "test_acc_mean", "test_acc_std", "delta_acc", "verdict", "status"]
# the order of the rows: decided first, then what is left open, then what was not compared
ORDER = ["significant", "no effect", "undecided", "diverged", "no test", "reference"]


class ShowError(ValueError):
    """No finished study to show, or a summary that lacks what the table needs."""


def verdict(row: dict[str, Any]) -> str:
    """An experiment's verdict as the report names it: ``diverged`` over any test, ``reference`` without one."""
    if diverged(row):
        return "diverged"
    if _missing(row.get("reference")):
        return "reference"
    return VERDICT_NAMES.get(row.get("verdict"), "no test")


def rows(experiments: pd.DataFrame) -> list[dict[str, str]]:
    """The table's rows as text, decided verdicts first (study order within each verdict)."""
    missing = [c for c in COLUMNS if c not in experiments.columns]
    if missing:
        raise ShowError(f"missing column {missing[0]!r}")
    out = []
    for row in experiments.to_dict("records"):
        acc = pct(row["test_acc_mean"]) + ("" if _missing(row["test_acc_std"]) else f" ± {pct(row['test_acc_std'])}")
        out.append(
            {"experiment": str(row["experiment"]), "acc": acc, "delta": pp(row["delta_acc"]), "verdict": verdict(row)}
        )
    return sorted(out, key=lambda r: ORDER.index(r["verdict"]))


def table(experiments: pd.DataFrame) -> str:
    """``experiments.csv`` as a compact console table: experiment, test accuracy, Δ, verdict."""
    body = rows(experiments)
    head = {"experiment": "experiment", "acc": "test acc. (%)", "delta": "Δ (pp)", "verdict": "verdict"}
    width = {k: max(len(r[k]) for r in [head, *body]) for k in head}
    line = "{experiment:<{w[experiment]}}  {acc:>{w[acc]}}  {delta:>{w[delta]}}  {verdict}"
    return "\n".join(line.format(**r, w=width).rstrip() for r in [head, *body])


def mlflow_line(info: dict[str, Any]) -> str | None:
    """How to open the study's MLflow experiment (``mlflow.json``): the UI command for a local store, the
    server's link for a remote one; None without a tracking URI."""
    uri = info.get("tracking_uri")
    if not uri:
        return None
    uri = split_credentials(str(uri))[0]  # the record holds none; a user-info part, redacted or not, goes
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {uri.rstrip('/')}/{info.get('url') or ''}"
    return f"MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def summary(summary_dir: str | Path, report: str | Path | None = None, mlflow_info: str | Path | None = None) -> str:
    """The results table of ``summary_dir/experiments.csv``, then the report's path (when it exists) and the
    MLflow command (from ``mlflow_info`` when it exists). ShowError when there is no summary yet."""
    path = Path(summary_dir) / "experiments.csv"
    if not path.is_file():
        raise ShowError(f"no finished study in {Path(summary_dir).parent}/: run snakemake first ({path} not found)")
    try:
        lines = [table(read_table(path))]
    except (ShowError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ShowError(f"{path}: {err}") from None
    if report and Path(report).is_file():
        lines.append(f"report: {report}")
    if mlflow_info and Path(mlflow_info).is_file():
        try:
            info = json.loads(Path(mlflow_info).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ShowError(f"{mlflow_info}: not JSON ({err})") from None
        if line := mlflow_line(info):
            lines.append(line)
    return "\n".join(lines)


def report_current(report: str | Path, summary_dir: str | Path) -> bool:
    """Whether the published ``report`` exists and is no older than ``summary_dir/experiments.csv``: the
    table then says what the report says."""
    report, path = Path(report), Path(summary_dir) / "experiments.csv"
    return report.is_file() and path.is_file() and report.stat().st_mtime >= path.stat().st_mtime


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablationlab show", description=__doc__.split("\n")[0])
    parser.add_argument("--summary", default=layout.SUMMARY_DIR, help="the summary folder (experiments.csv)")
    parser.add_argument("--report", default=layout.REPORT_HTML, help="the published report")
    parser.add_argument("--mlflow", default=layout.MLFLOW_INFO, help="the MLflow experiment's record")
    args = parser.parse_args(argv)
    try:
        print(summary(args.summary, args.report, args.mlflow))
    except ShowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
