"""Stage ``track``: the study's one MLflow writer (the workflow's ``track`` job), after the summary.

One MLflow experiment per study, one child run per seed (params, per-epoch metrics, test metrics,
artifacts: what the run's files say) and one parent run per experiment, which carries exactly the
summary's numbers: every number of the experiment's rows of ``experiments.csv`` and
``diagnostics.csv`` as a metric of the same name, their text as tags. Nothing is aggregated here, so
MLflow and the report never disagree; what only this stage knows is added: the seeds' child run ids
(``seeds.json``), the seeds (tag) and the run's description.

It logs what is new or changed (:mod:`ablationlab.mlflow_store`: runs found by their ``run_key``
tag): a child whose ``files_sha256`` tag matches its run directory and a parent whose
``inputs_sha256`` matches its inputs are not touched. A run whose recipe changed gets a new run key,
hence a new run; the old one is tagged ``superseded=true``, never deleted. Live logging from
training (:mod:`ablationlab.live_mlflow`) may write to the same runs meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablationlab import io, layout, summarize
from ablationlab.credentials import redact
from ablationlab.layout import job_log, stem_seeds
from ablationlab.mlflow_store import (
    DEFAULT_URI,
    EPOCH_METRICS,
    UI_QUERY,
    Tracker,
    TrackingError,
    base_tags,
    export_credentials,
    log_missing,
    mlflow_params,
    open_runs,
    run_key,
    server_problem,
    store_write_error,
)

log = logging.getLogger(__name__)

RECORD_COLUMNS = (
    "experiment",
    "seed",
    "kind",
    "mlflow_run_id",
    "mlflow_parent_run_id",
    "mlflow_experiment_id",
    "mlflow_url",
    "run_key",
)
ARTIFACTS = ("history.csv", "metrics.json", "confusion.csv", "weights.pt", "recipe.json", "train.json")


def _log_artifacts(tracker: Tracker, run, files: Mapping[str, Path], *, new: bool = False) -> None:
    """Upload ``{artifact name: local file}`` unless an artifact of that name and size exists (a ``new``
    run, created in this session, has none: not listed): the missing ones in one call, from a folder
    of links to them (copies where links fail)."""
    have = {} if new else {a.path: a.file_size for a in tracker.call("list_artifacts", run.info.run_id)}
    missing = {name: path for name, path in files.items() if have.get(name) != path.stat().st_size}
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in missing.items():
            try:
                os.link(path, Path(tmp) / name)
            except OSError:
                shutil.copyfile(path, Path(tmp) / name)
        tracker.call("log_artifacts", run.info.run_id, tmp)


def _finish(tracker: Tracker, run, end_time: int | None = None) -> None:
    if run.info.status != "FINISHED":
        tracker.call("set_terminated", run.info.run_id, "FINISHED", end_time=end_time)


def _history(path: Path) -> dict[str, dict[int, float]]:
    """history.csv as ``{metric: {epoch: value}}``."""
    import pandas as pd

    frame = pd.read_csv(path)
    missing = [c for c in ["epoch", *EPOCH_METRICS] if c not in frame.columns]
    if missing:
        raise TrackingError(f"{path}: missing column(s) {', '.join(missing)}")
    return {
        metric: {int(e): float(v) for e, v in zip(frame["epoch"], frame[col]) if not pd.isna(e)}
        for col, metric in EPOCH_METRICS.items()
    }


def _read_run(run_dir: Path) -> dict[str, Any]:
    """What a child run logs of one run directory: its recipe, train.json, metrics.json and history."""
    missing = [name for name in layout.TRACK_READS if not (run_dir / name).is_file()]
    if missing:
        raise TrackingError(f"run {run_dir}: missing {', '.join(missing)}")
    data = {
        name.removesuffix(".json"): io.read_json(run_dir / name)
        for name in ("recipe.json", "train.json", "metrics.json")
    }
    if "seed" not in data["train"]:
        raise TrackingError(f"{run_dir / 'train.json'}: missing key 'seed'")
    data["history"] = _history(run_dir / "history.csv")
    return data


def init(tracker: Tracker) -> dict[str, Any]:
    """The MLflow experiment's record (``results/mlflow.json``), creating it if absent."""
    eid = tracker.experiment_id
    return {
        "experiment_id": eid,
        "experiment_name": tracker.name,
        "tracking_uri": tracker.redacted,
        "url": f"#/experiments/{eid}?{UI_QUERY}",
    }


def files_digest(run_dir: Path) -> str:
    """sha256 over a run's small result files (``layout.TRACK_DIGESTED``): retraining or re-evaluating
    changes it (``train.json`` holds the wall time). Tagged ``files_sha256`` on the child run
    once it is completely logged, so an unchanged run is skipped without reading the store."""
    digest = hashlib.sha256()
    for name in layout.TRACK_DIGESTED:
        digest.update(name.encode() + b"\0" + (run_dir / name).read_bytes())
    return digest.hexdigest()


def _content_digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def log_child(tracker: Tracker, data: Mapping[str, Any], ident: Mapping[str, str]):
    """Log one run (``_read_run`` output plus ``dir``, ``digest``, ``log``) as a child run;
    return it (its ids and identifying tags; not read back). Its ``files_sha256`` tag is set last:
    a half-logged run is logged again."""
    train, metrics, seed, run_dir = data["train"], data["metrics"], int(data["train"]["seed"]), data["dir"]
    # the run spans the training (train.json is written last; wall_seconds: the training time,
    # resumes included), not the writer: the UI's duration
    end_ms = int((run_dir / "train.json").stat().st_mtime * 1000)
    start_ms = end_ms - int(1000 * float(train.get("wall_seconds") or 0))
    # the params go into the run's one batch below (the parent's: log_parent)
    _, child, created = open_runs(
        tracker, recipe=data["recipe"], seed=seed, start_time=start_ms, log_params=False, **ident
    )
    final = {f"test_{k}": metrics.get(f"test_{k}") for k in ("loss", "acc", "top5")}
    final.update(
        {k: train.get(k) for k in ("best_val_loss", "best_val_acc", "best_epoch", "epochs_run", "wall_seconds")}
    )
    final.update(
        {
            "params_trainable": train.get("params"),
            "params_total": train.get("params_total"),
            "n_test": metrics.get("n_test"),
        }
    )
    tags = {
        "superseded": "false",  # the run being logged is its seed's current one (mark_superseded)
        "status": metrics.get("status") or train.get("status"),
        "device": train.get("device"),
        "torch_version": train.get("torch_version"),
        "stop_reason": train.get("stop_reason"),
    }
    log_missing(tracker, child, params=mlflow_params(data["recipe"]), tags=tags, metrics=final, history=data["history"])
    files = {name: run_dir / name for name in ARTIFACTS}
    if data.get("log") is not None:
        files["train.log"] = data["log"]
    _log_artifacts(tracker, child, files, new=created)
    _finish(tracker, child, end_time=end_ms)
    log_missing(tracker, child, tags={"files_sha256": data["digest"]})
    return child


def _note(experiment: str, metrics: Mapping[str, float], tags: Mapping[str, str], seeds: list[int]) -> str:
    """The parent run's description (``mlflow.note.content``, markdown), from its summary row."""
    acc = metrics.get("test_acc_mean")
    if acc is None:
        return f"**{experiment}**"
    std = metrics.get("test_acc_std", 0.0)
    lines = [f"**{experiment}**: test accuracy {acc:.4f} ± {std:.4f} over {len(seeds)} seed(s) {seeds}"]
    if "delta_acc" in metrics:
        ci = (
            f" (CI {metrics['delta_ci_low']:+.4f} … {metrics['delta_ci_high']:+.4f})"
            if "delta_ci_low" in metrics and "delta_ci_high" in metrics
            else ""
        )
        holm = f", Holm p = {metrics['p_value_holm']:.3g}" if "p_value_holm" in metrics else ""
        lines.append(
            f"Δ vs {tags.get('reference', 'reference')}: {metrics['delta_acc']:+.4f}{ci}"
            f"{', ' + tags['test'] if tags.get('test') else ''}{holm}"
            f"{' — ' + tags['verdict'] if tags.get('verdict') else ''}"
        )
    if tags.get("diagnostics.reading"):
        lines.append(tags["diagnostics.reading"])
    return "\n\n".join(lines)


def _seeds(experiment: str, runs: Sequence[Mapping[str, Any]]) -> list[int]:
    """The seeds of one experiment's runs (one recipe, distinct seeds: else TrackingError)."""
    for data in runs[1:]:
        if data["recipe"] != runs[0]["recipe"]:
            raise TrackingError(
                f"experiment {experiment}: {data['dir']}/recipe.json differs from {runs[0]['dir']}/recipe.json"
            )
    seeds = [int(d["train"]["seed"]) for d in runs]
    if len(set(seeds)) != len(seeds):
        raise TrackingError(f"experiment {experiment}: duplicate seeds {seeds}")
    return seeds


def log_parent(
    tracker: Tracker,
    runs: Sequence[Mapping[str, Any]],
    ident: Mapping[str, str],
    summary: Mapping[str, Any],
    existing: Mapping[str, Any],
):
    """Log (or update) the parent run of one experiment: its recipe (params), ``summary`` (its
    ``{"metrics", "tags"}`` from the summary, :func:`parent_records`) and its seeds' child runs (``runs``,
    each with its ``run``) in ``seeds.json``. Skipped when its ``inputs_sha256`` tag says nothing
    changed; return ``(parent run, logged)``."""
    experiment = ident["experiment"]
    runs = sorted(runs, key=lambda d: int(d["train"]["seed"]))
    recipe, seeds = runs[0]["recipe"], _seeds(experiment, runs)
    seeds_rows = [
        {
            "seed": s,
            "run_id": d["run"].info.run_id,
            "status": d["metrics"].get("status"),
            "test_acc": d["metrics"].get("test_acc"),
            "test_loss": d["metrics"].get("test_loss"),
        }
        for s, d in zip(seeds, runs)
    ]
    key = run_key(experiment, ident["dataset"], recipe)
    digest = _content_digest(ident, recipe, seeds_rows, summary)
    parent = existing.get(key)
    if parent is not None and parent.data.tags.get("inputs_sha256") == digest:
        return parent, False
    tags = base_tags(kind="parent", **ident)
    parent, created = tracker.ensure_run(key, name=experiment, tags=tags)
    metrics, summary_tags = summary["metrics"], summary["tags"]
    log_missing(
        tracker,
        parent,
        params=mlflow_params(recipe),
        metrics=metrics,
        tags={
            **tags,
            **summary_tags,
            "seeds": json.dumps(seeds),
            "superseded": "false",  # the parent being logged is its experiment's current one
            "mlflow.note.content": _note(experiment, metrics, summary_tags, seeds),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "seeds.json"
        table.write_text(json.dumps(seeds_rows, indent=2))
        _log_artifacts(tracker, parent, {"seeds.json": table}, new=created)
    _finish(tracker, parent)
    log_missing(tracker, parent, tags={"inputs_sha256": digest})
    return tracker.call("get_run", parent.info.run_id), True


def mark_superseded(tracker: Tracker, current: Mapping[tuple[str, str], str]) -> int:
    """Tag ``superseded`` on every run of a tracked (experiment, seed) — seed ``""`` for the
    parent: ``false`` for the run whose key is ``current[...]``, ``true`` for the older ones
    (never deleted). Runs of experiments not in ``current`` are left alone. Returns how many
    runs were newly superseded."""
    superseded = 0
    for run in tracker.find({}):
        tags = run.data.tags
        ident = (tags.get("experiment"), tags.get("seed", "") if tags.get("kind") == "child" else "")
        if tags.get("kind") not in ("child", "parent") or ident not in current:
            continue
        want = "false" if tags.get("run_key") == current[ident] else "true"
        if tags.get("superseded") != want:
            tracker.call("set_tag", run.info.run_id, "superseded", want)
            superseded += want == "true"
    return superseded


def parent_records(summary_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {"metrics": {...}, "tags": {...}}}`` of the parent runs: every number of the
    experiment's rows of ``experiments.csv`` and ``diagnostics.csv`` (when there) under its column's
    name, every text as a tag (``diagnostics.<column>`` for the curves' reading); empty cells are left out."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, prefix in (("experiments.csv", ""), ("diagnostics.csv", "diagnostics.")):
        path = Path(summary_dir) / name
        if name == "diagnostics.csv" and not path.is_file():
            continue
        try:
            frame = summarize.read_table(path)
        except summarize.SummaryError as exc:
            raise TrackingError(str(exc)) from None
        if "experiment" not in frame.columns:
            raise TrackingError(f"{path}: missing column 'experiment'")
        for row in frame.to_dict("records"):
            entry = out.setdefault(row.pop("experiment"), {"metrics": {}, "tags": {}})
            for column, value in row.items():
                if isinstance(value, str):
                    entry["tags"][prefix + column] = value
                elif isinstance(value, (int, float)) and math.isfinite(value):
                    entry["metrics"][column] = float(value)
    return out


def _load_runs(
    run_dirs: Sequence[str | os.PathLike], runs_root: Path, table: Mapping[str, Any], logs_dir: Path | None
) -> dict[str, list[dict[str, Any]]]:
    """Every run directory read and checked (before MLflow is touched), by experiment id."""
    known = {e["id"] for e in table["experiments"]}
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for run_dir in map(Path, run_dirs):
        try:
            experiment = run_dir.parent.relative_to(runs_root).as_posix()
        except ValueError:
            raise TrackingError(f"run {run_dir} is not under {runs_root}") from None
        if experiment not in known:
            raise TrackingError(f"run {run_dir}: experiment {experiment!r} is not in the study table")
        data = _read_run(run_dir)
        seeds = stem_seeds(run_dir.name)
        data.update(
            dir=run_dir,
            digest=files_digest(run_dir),
            log=job_log(logs_dir, experiment, seeds[0]) if logs_dir is not None and seeds else None,
        )
        by_experiment.setdefault(experiment, []).append(data)
    return by_experiment


def _record_row(tracker: Tracker, run, experiment: str, seed: int | str) -> dict[str, Any]:
    info = tracker.run_info(run)
    return {
        "experiment": experiment,
        "seed": seed,
        "kind": "child" if seed != "" else "parent",
        "mlflow_run_id": info["run_id"],
        "mlflow_parent_run_id": run.data.tags.get("mlflow.parentRunId", ""),
        "mlflow_experiment_id": info["experiment_id"],
        "mlflow_url": info["ui_url"] or info["url"],
        "run_key": run.data.tags.get("run_key", ""),
    }


def track_study(
    run_dirs: Sequence[str | os.PathLike],
    *,
    study_table: str | os.PathLike,
    runs_root: str | os.PathLike,
    study: str,
    out: str | os.PathLike,
    record: str | os.PathLike,
    summary_dir: str | os.PathLike,
    logs_dir: str | os.PathLike | None = None,
    uri: str = DEFAULT_URI,
    mlflow_experiment: str = "ablationlab",
    lock=None,
) -> dict[str, Any]:
    """The study's one MLflow writer: log the child runs of ``run_dirs`` that are new or
    changed (by ``run_key`` and ``files_sha256``), update every parent run (the summary's rows of
    its experiment, read from ``summary_dir``), tag superseded runs; write ``out`` (the MLflow
    experiment) and ``record`` (``RECORD_COLUMNS``: one row per run and per parent)."""
    table = io.read_json(study_table)
    by_experiment = _load_runs(run_dirs, Path(runs_root), table, Path(logs_dir) if logs_dir else None)
    summary = parent_records(summary_dir)
    if missing := [e for e in by_experiment if e not in summary]:
        raise TrackingError(f"{Path(summary_dir) / 'experiments.csv'} lacks experiments {missing}: re-run summarize")
    groups, dataset = {e["id"]: e["group"] for e in table["experiments"]}, table["dataset"]
    tracker = Tracker(uri, mlflow_experiment, lock=lock)
    rows, current, logged = [], {}, {"children": 0, "parents": 0}
    with tracker.session():
        info = init(tracker)
        existing = {r.data.tags.get("run_key"): r for r in tracker.find({})}
        for experiment, runs in by_experiment.items():
            ident = {"study": study, "experiment": experiment, "group": groups[experiment], "dataset": dataset}
            for data in runs:
                seed = int(data["train"]["seed"])
                key = run_key(experiment, dataset, data["recipe"], seed)
                run = existing.get(key)
                if run is None or run.data.tags.get("files_sha256") != data["digest"]:
                    run, logged["children"] = log_child(tracker, data, ident), logged["children"] + 1
                data["run"], current[(experiment, str(seed))] = run, key
                rows.append(_record_row(tracker, run, experiment, seed))
            parent, changed = log_parent(tracker, runs, ident, summary[experiment], existing)
            logged["parents"] += changed
            current[(experiment, "")] = parent.data.tags["run_key"]
            rows.append(_record_row(tracker, parent, experiment, ""))
        superseded = mark_superseded(tracker, current)
    _write_record(record, rows)
    info.update(logged=logged, superseded=superseded)
    io.write_json(out, info)
    log.info(
        "MLflow %s: logged %d child and %d parent runs of %d; %d newly superseded",
        tracker.redacted,
        logged["children"],
        logged["parents"],
        len(rows),
        superseded,
    )
    return info


def _write_record(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    io.write_csv(path, pd.DataFrame(rows, columns=RECORD_COLUMNS))


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ablationlab track", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("study", help="log a study's new or changed runs and update its parent runs")
    p.add_argument("--uri", default=DEFAULT_URI, help=f"tracking URI (default {DEFAULT_URI})")
    p.add_argument("--mlflow-experiment", required=True, help="MLflow experiment name (one per study)")
    p.add_argument("--lock", default=None, help="lock file (default: <db>.lock, or results/.mlflow-*.lock)")
    p.add_argument("--study", required=True, help="study name (tag)")
    p.add_argument("--study-table", required=True, help="results/study/experiments.json")
    p.add_argument("--runs", dest="runs_root", required=True, help="the runs' root folder, results/runs")
    p.add_argument(
        "--run",
        dest="run_dirs",
        required=True,
        nargs="+",
        action="extend",
        metavar="DIR",
        help="run directories to track, results/runs/{experiment}/seed{n}",
    )
    p.add_argument(
        "--summary", dest="summary_dir", required=True, help="folder with experiments.csv [and diagnostics.csv]"
    )
    p.add_argument(
        "--logs",
        dest="logs_dir",
        help="train job logs, {logs}/{experiment}/seed<seeds>.log (attached to each run they trained)",
    )
    p.add_argument("--out", required=True, help="the MLflow experiment's record, results/mlflow.json")
    p.add_argument("--record", required=True, help="one row per run, results/summary/mlflow.csv")
    return parser


def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        problem = server_problem(export_credentials(args.uri))  # one clear line, not minutes of retries
        if problem:
            raise TrackingError(problem)
        # each option's dest is the name of track_study()'s parameter
        info = track_study(**{k: v for k, v in vars(args).items() if k != "command"})
    except TrackingError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        if (failed := store_write_error(exc, args.uri)) is None:
            raise
        raise failed from None  # python -m ablationlab: one line naming the database file
    print(json.dumps({k: info[k] for k in ("experiment_id", "tracking_uri", "url", "logged")}))
    return 0
