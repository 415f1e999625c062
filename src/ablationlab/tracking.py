"""MLflow tracking: one MLflow experiment per study, one parent run per experiment
(seed-aggregated metrics and the summary's statistics) and one child run per seed (params,
per-epoch metrics, test metrics, artifacts).

One writer per study (:func:`track_study`, the workflow's ``track`` job) logs what is new or
changed: a run is found by its ``run_key`` tag (sha256 of the experiment id, dataset,
resolved recipe and seed) and updated, never duplicated; a child whose ``files_sha256`` tag
matches its run directory and a parent whose ``inputs_sha256`` matches its inputs are not
touched. A run whose recipe changed gets a new run key, hence a new run; the old one is
tagged ``superseded=true``, never deleted. Live logging from training jobs (:class:`LiveRun`)
may write concurrently: a file lock serialises create-if-absent (and, for SQLite stores,
every write, so that eight jobs on one ``mlflow.db`` never see "database is locked" nor a
half-created schema), and "database is locked" is retried.

Credentials never leave this module: a URI such as ``https://user:pass@host`` is
split into MLflow's ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` environment variables
and a clean URI, and every URI written or printed goes through :func:`redact`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ablationlab import diagnostics, io
from ablationlab import stats as seed_stats
from ablationlab.credentials import redact
from ablationlab.keypath import flatten
from ablationlab.provenance import git_commit

log = logging.getLogger(__name__)

_git_commit = functools.cache(git_commit)  # one git call per process, not one per run
DEFAULT_URI = "sqlite:///results/mlflow.db"
EPOCH_METRICS = {  # history.csv column -> MLflow metric (step = epoch)
    "train_loss": "train_loss",
    "train_acc": "train_acc",
    "val_loss": "val_loss",
    "val_acc": "val_acc",
    "lr": "lr",
    "seconds": "epoch_seconds",
    "images_per_s": "images_per_s",
}
EXPERIMENT_TAGS = {  # the UI opens a training experiment on its runs table, not on GenAI traces
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "ablationlab study: one parent run per experiment (mean/std over seeds), "
    "one child run per seed nested under it. Current runs: `tags.superseded = 'false'`.",
}
UI_QUERY = "workflowType=machine_learning"  # MLflow 3's UI otherwise opens in its GenAI mode
DIGEST_FILES = ("recipe.json", "train.json", "history.csv", "metrics.json", "confusion.csv")
# parent-run statistics: results/summary/experiments.csv columns (metrics; {column: tag}) and
# results/summary/diagnostics.csv (the curves' reading); absent columns are skipped
STAT_METRICS = (
    "test_acc_ci_low",
    "test_acc_ci_high",
    "delta_acc",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_value_wilcoxon",
    "p_value_holm",
    "holm_family",
    "q_value",
    "n_pairs",
    "effect_size",
    "prob_improvement",
    "prob_improvement_ci_low",
    "prob_improvement_ci_high",
    "mde_acc",
    "seeds_needed",
)
STAT_TAGS = {"reference": "reference", "test": "test", "effect_size_kind": "effect_size_kind", "verdict": "verdict"}
DIAGNOSTIC_TAGS = {"flags": "diagnostics.flags", "reading": "diagnostics.reading"}
DIAGNOSTIC_METRICS = tuple(c for c in diagnostics.COLUMNS if c != "experiment" and c not in DIAGNOSTIC_TAGS)
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
RUN_FILES = ("recipe.json", "train.json", "history.csv", "metrics.json", "confusion.csv", "weights.pt")
ARTIFACTS = ("history.csv", "metrics.json", "confusion.csv", "weights.pt", "recipe.json", "train.json")
# MLflow's HTTP client retries a refused connection 7 times with exponential backoff (about
# 4 minutes) and waits up to 120 s per request; jobs give up within seconds instead (a setting
# already in the environment wins)
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(ValueError):
    """Bad tracking input (missing run file, inconsistent runs, unsupported URI)."""


# ----------------------------------------------------------------------------- helpers
def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password@, user, password)``."""
    parts = urlsplit(str(uri))
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
        return clean, unquote(user) or None, unquote(password) or None
    return str(uri), None, None


def export_credentials(uri: str) -> str:
    """Move ``user:password@`` of an http(s) ``uri`` into MLflow's ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD`` environment variables; return the bare URI."""
    clean, user, password = split_credentials(uri)
    if user is not None:
        os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
    return clean


def bound_http_retries() -> None:
    """Apply :data:`HTTP_LIMITS` (unless set) before the first MLflow request of this process."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


# a read-only call of MLflow's REST API, which any MLflow tracking server answers with a JSON object
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search"
_PROBE_KEYS = {"experiments", "next_page_token"}
_NO_SERVER_NEEDED = "sqlite:///results/mlflow.db needs no server"


def _probe(uri: str) -> urllib.request.Request:
    """POST experiments/search (one result) to ``uri``, with MLflow's credentials from its environment."""
    headers = {"Content-Type": "application/json"}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    elif (user := os.environ.get("MLFLOW_TRACKING_USERNAME")) is not None:
        pair = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    url = uri.rstrip("/") + MLFLOW_PROBE
    return urllib.request.Request(url, data=b'{"max_results": 1}', headers=headers, method="POST")


def server_problem(uri: str, timeout: float = 10.0) -> str | None:
    """One line naming the http(s) tracking server ``uri`` and what to do if it does not answer
    MLflow's REST API as MLflow does (:data:`MLFLOW_PROBE`), else None; other URIs (SQLite, a
    directory) are local and always pass."""
    if not str(uri).startswith(("http://", "https://")):
        return None
    request = _probe(uri)
    where = redact(request.full_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:  # it answered, but not as MLflow does
        if exc.code in (401, 403):
            return (
                f"tracking.uri: MLflow server {redact(uri)} refused the request (HTTP {exc.code} from {where}); "
                "give its user and password in tracking.uri (https://user:password@host), then run the same "
                "command again"
            )
        return _not_mlflow(uri, f"HTTP {exc.code} from {where}")
    except (OSError, ValueError) as exc:  # refused, unknown host, timed out, malformed
        return (
            f"tracking.uri: MLflow server {redact(uri)} is not reachable ({getattr(exc, 'reason', None) or exc}); "
            f"start it, or fix tracking.uri ({_NO_SERVER_NEEDED}), then run the same command again"
        )
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.keys() <= _PROBE_KEYS:
        return None
    return _not_mlflow(uri, f"no MLflow answer from {where}")


def _not_mlflow(uri: str, why: str) -> str:
    return (
        f"tracking.uri: {redact(uri)} is not an MLflow tracking server ({why}); point tracking.uri at one "
        f"(mlflow server ...), or use a local store ({_NO_SERVER_NEEDED}), then run the same command again"
    )


def run_key(experiment: str, dataset: str, recipe: Mapping[str, Any], seed: int | None = None) -> str:
    """sha256 of the canonical (experiment, dataset, recipe, seed); ``seed=None`` keys the parent."""
    ident = {
        "experiment": experiment,
        "dataset": dataset,
        "recipe": recipe,
        "seed": "parent" if seed is None else int(seed),
    }
    return hashlib.sha256(io.canonical_json(ident).encode()).hexdigest()


def mlflow_params(recipe: Mapping[str, Any]) -> dict[str, str]:
    """Recipe as MLflow params: dotted keys (``optimizer.lr``); non-strings as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in flatten(recipe).items()}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def _quote(value: str) -> str:
    value = str(value)
    if "'" in value and '"' in value:
        raise TrackingError(f"tag value {value!r} contains both quote characters")
    return f'"{value}"' if "'" in value else f"'{value}'"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry(fn: Callable, *args, attempts: int = 12, **kwargs):
    """Call ``fn``; on SQLite "database is locked" retry with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException or sqlalchemy OperationalError
            if not _locked_error(exc) or attempt == attempts - 1:
                raise
            delay = min(5.0, 0.05 * 2**attempt) * (0.5 + random.random())
            log.warning("MLflow store locked, retrying in %.2f s", delay)
            time.sleep(delay)


# ----------------------------------------------------------------------------- store
class Tracker:
    """An MLflow store + experiment, with the lock that makes create-if-absent safe."""

    def __init__(self, uri: str = DEFAULT_URI, name: str = "ablationlab", *, lock: str | os.PathLike | None = None):
        from filelock import FileLock

        if not name:
            raise TrackingError("tracking: MLflow experiment name is empty")
        # no usage telemetry from pipeline jobs (offline cluster nodes would wait on it); opt in
        # with MLFLOW_DISABLE_TELEMETRY=false
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        bound_http_retries()
        clean = export_credentials(uri)
        self.uri = clean
        self.redacted = redact(uri)
        self.name = name
        self.sqlite_path = _sqlite_path(clean)
        if lock is None:
            lock = (
                f"{self.sqlite_path}.lock"
                if self.sqlite_path
                else Path("results") / f".mlflow-{hashlib.sha256(clean.encode()).hexdigest()[:12]}.lock"
            )
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock))
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            if self.sqlite_path:
                Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
                # warm-up outside the lock: MLflow has no public call for it, but importing the SQL
                # store (what the client loads for a sqlite: URI) is 0.7 s of the first connection
                with contextlib.suppress(Exception):
                    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
            with self.lock:  # the first use of a new SQLite store creates its schema
                self._client = MlflowClient(tracking_uri=self.uri)
                _retry(self._client.search_experiments, max_results=1)
        return self._client

    def call(self, method: str, *args, **kwargs):
        """``client.<method>(...)``, retried on "database is locked"."""
        return _retry(getattr(self.client, method), *args, **kwargs)

    @contextlib.contextmanager
    def session(self) -> Iterator[Tracker]:
        """Hold the lock for a SQLite store (one writer at a time); no-op for servers."""
        self.client  # connect (seconds of imports) before taking the lock  # noqa: B018 (a property with an effect)
        with self.lock if self.sqlite_path else contextlib.nullcontext():
            yield self

    @property
    def experiment_id(self) -> str:
        """Id of the experiment ``name``, created (or restored) once under the lock."""
        if self._experiment_id is None:
            with self.lock:
                exp = self.call("get_experiment_by_name", self.name)
                if exp is None:
                    location = None
                    if self.sqlite_path:  # artifacts next to the database, not in ./mlruns
                        location = (Path(self.sqlite_path).resolve().parent / "mlartifacts").as_uri()
                    eid = self.call("create_experiment", self.name, artifact_location=location, tags=EXPERIMENT_TAGS)
                else:
                    eid = exp.experiment_id
                    if exp.lifecycle_stage == "deleted":
                        self.call("restore_experiment", eid)
                    for key, value in EXPERIMENT_TAGS.items():
                        if key not in exp.tags:
                            self.call("set_experiment_tag", eid, key, value)
                self._experiment_id = eid
        return self._experiment_id

    def find(self, filters: Mapping[str, Any]) -> list:
        """Active runs of the experiment whose tags equal ``filters``, oldest first."""
        query = " AND ".join(f"tags.{k} = {_quote(v)}" for k, v in filters.items())
        runs, token = [], None
        while True:  # every page: a study can hold more runs than one page
            page = self.call(
                "search_runs",
                [self.experiment_id],
                filter_string=query,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def ensure_run(self, key: str, *, name: str, tags: Mapping[str, str], start_time: int | None = None):
        """``(run, created)``: the run tagged ``run_key=key``, created if absent (under the lock)."""
        with self.lock:
            runs = self.find({"run_key": key})
            if runs:
                return runs[0], False
            tags = {**tags, "run_key": key}
            return self.call("create_run", self.experiment_id, tags=tags, run_name=name, start_time=start_time), True

    def run_info(self, run, **extra) -> dict[str, Any]:
        """The ``mlflow.json`` record of ``run`` (URIs redacted)."""
        eid, rid = run.info.experiment_id, run.info.run_id
        info = {
            "run_id": rid,
            "experiment_id": eid,
            "experiment_name": self.name,
            "tracking_uri": self.redacted,
            "run_name": run.info.run_name,
            "url": f"#/experiments/{eid}/runs/{rid}?{UI_QUERY}",
            "ui_url": None,
        }
        if self.uri.startswith(("http://", "https://")):
            info["ui_url"] = f"{self.redacted.rstrip('/')}/{info['url']}"
        return {**info, **extra}


def _sqlite_path(uri: str) -> str | None:
    if not uri.startswith("sqlite:"):
        return None
    if not uri.startswith("sqlite:///") or uri == "sqlite:///" or ":memory:" in uri:
        raise TrackingError(
            f"tracking uri {uri!r}: an in-memory SQLite store is not shared "
            "between jobs; use sqlite:///path/to/mlflow.db"
        )
    return uri.removeprefix("sqlite:///").split("?", 1)[0]


# ----------------------------------------------------------------------------- logging
def _log(tracker: Tracker, run, *, params=None, tags=None, metrics=None, history=None) -> None:
    """Log what ``run`` lacks: params/metrics/epoch rows already there are skipped."""
    from mlflow.entities import Metric, Param, RunTag

    rid, now = run.info.run_id, _now_ms()
    have_params = run.data.params
    batch_params = [Param(k, v) for k, v in (params or {}).items() if k not in have_params]
    batch_tags = [
        RunTag(k, str(v)) for k, v in (tags or {}).items() if v is not None and run.data.tags.get(k) != str(v)
    ]
    batch_metrics = [
        Metric(k, float(v), now, 0)
        for k, v in (metrics or {}).items()
        if v is not None and not (k in run.data.metrics and _same(run.data.metrics[k], float(v)))
    ]
    for key, steps in (history or {}).items():
        logged = {}
        if key in run.data.metrics:
            logged = {m.step: m.value for m in tracker.call("get_metric_history", rid, key)}
        batch_metrics += [
            Metric(key, float(v), now, int(step))
            for step, v in steps.items()
            if not (step in logged and _same(logged[step], float(v)))
        ]
    if batch_params or batch_tags or batch_metrics:
        tracker.call("log_batch", rid, metrics=batch_metrics, params=batch_params, tags=batch_tags)


def _log_artifacts(tracker: Tracker, run, files: Mapping[str, Path]) -> None:
    """Upload ``{artifact name: local file}`` unless an artifact of that name and size exists."""
    have = {a.path: a.file_size for a in tracker.call("list_artifacts", run.info.run_id)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in files.items():
            if have.get(name) == path.stat().st_size:
                continue
            if path.name != name:
                target = Path(tmp) / name
                target.write_bytes(path.read_bytes())
                path = target
            tracker.call("log_artifact", run.info.run_id, str(path))


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
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
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


# ----------------------------------------------------------------------------- runs
def _base_tags(*, study: str, experiment: str, group: str, dataset: str, kind: str) -> dict[str, str]:
    tags = {"study": study, "experiment": experiment, "group": group, "dataset": dataset, "kind": kind}
    commit = _git_commit()
    if commit:  # MLflow's tag takes a bare commit (the UI links it); ours says +dirty too
        tags.update({"git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("+dirty")})
    return tags


def open_runs(
    tracker: Tracker,
    *,
    recipe: Mapping[str, Any],
    seed: int,
    study: str,
    experiment: str,
    group: str,
    dataset: str,
    start_time: int | None = None,
):
    """``(parent, child, created)`` for one seed, both created if absent (new runs start at
    ``start_time``, ms since the epoch, default now: the parent when its first seed started
    training, roughly); params logged."""
    tags = _base_tags(study=study, experiment=experiment, group=group, dataset=dataset, kind="parent")
    params = mlflow_params(recipe)
    parent, created = tracker.ensure_run(
        run_key(experiment, dataset, recipe), name=experiment, tags=tags, start_time=start_time
    )
    if created:
        _log(tracker, parent, params=params)
    child_tags = {**tags, "kind": "child", "seed": str(seed), "mlflow.parentRunId": parent.info.run_id}
    child, created = tracker.ensure_run(
        run_key(experiment, dataset, recipe, seed),
        name=f"{experiment}/seed{seed}",
        tags=child_tags,
        start_time=start_time,
    )
    if created:
        _log(tracker, child, params=params)
        child = tracker.call("get_run", child.info.run_id)
    return parent, child, created


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
    """sha256 over a run's small result files (``DIGEST_FILES``): retraining or re-evaluating
    changes it (``train.json`` holds the wall time). Tagged ``files_sha256`` on the child run
    once it is completely logged, so an unchanged run is skipped without reading the store."""
    digest = hashlib.sha256()
    for name in DIGEST_FILES:
        digest.update(name.encode() + b"\0" + (run_dir / name).read_bytes())
    return digest.hexdigest()


def _content_digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def log_child(tracker: Tracker, data: Mapping[str, Any], ident: Mapping[str, str]):
    """Log one run (``_read_run`` output plus ``dir``, ``digest``, ``log``) as a child run;
    return it. Its ``files_sha256`` tag is set last: a half-logged run is logged again."""
    train, metrics, seed, run_dir = data["train"], data["metrics"], int(data["train"]["seed"]), data["dir"]
    # the run spans the training (train.json is written last; wall_seconds: the training time,
    # resumes included), not the writer: the UI's duration
    end_ms = int((run_dir / "train.json").stat().st_mtime * 1000)
    start_ms = end_ms - int(1000 * float(train.get("wall_seconds") or 0))
    _, child, _ = open_runs(tracker, recipe=data["recipe"], seed=seed, start_time=start_ms, **ident)
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
        "status": metrics.get("status") or train.get("status"),
        "device": train.get("device"),
        "torch_version": train.get("torch_version"),
        "stop_reason": train.get("stop_reason"),
    }
    _log(tracker, child, params=mlflow_params(data["recipe"]), tags=tags, metrics=final, history=data["history"])
    files = {name: run_dir / name for name in ARTIFACTS}
    if data.get("log") is not None:
        files["train.log"] = data["log"]
    _log_artifacts(tracker, child, files)
    _finish(tracker, child, end_time=end_ms)
    _log(tracker, child, tags={"files_sha256": data["digest"]})
    return tracker.call("get_run", child.info.run_id)


def _aggregate(experiment: str, runs: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Seed-aggregated ``(metrics, history)`` of one experiment's runs (same recipe, distinct seeds)."""
    for data in runs[1:]:
        if data["recipe"] != runs[0]["recipe"]:
            raise TrackingError(
                f"experiment {experiment}: {data['dir']}/recipe.json differs from {runs[0]['dir']}/recipe.json"
            )
    seeds = [int(d["train"]["seed"]) for d in runs]
    if len(set(seeds)) != len(seeds):
        raise TrackingError(f"experiment {experiment}: duplicate seeds {seeds}")
    metrics: dict[str, float] = {"n_seeds": len(runs)}
    columns = {
        "test_acc": "metrics",
        "test_loss": "metrics",
        "best_val_acc": "train",
        "best_val_loss": "train",
        "epochs_run": "train",
    }
    for key, source in columns.items():
        values = [float(d[source][key]) for d in runs if d[source].get(key) is not None]
        if values:
            metrics[f"{key}_mean"] = seed_stats.mean(values)
            if len(values) > 1:
                metrics[f"{key}_std"] = seed_stats.std(values)
            if key == "test_acc":
                metrics.update(test_acc_min=min(values), test_acc_max=max(values))
    history = {}
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
        epochs = sorted({e for d in runs for e in d["history"][metric]})
        history[metric] = {
            e: seed_stats.mean([d["history"][metric][e] for d in runs if e in d["history"][metric]]) for e in epochs
        }
    return metrics, history


def _note(experiment: str, metrics: Mapping[str, float], seeds: list[int], stats: Mapping[str, Any]) -> str:
    """The parent run's description (``mlflow.note.content``, markdown)."""
    acc = metrics.get("test_acc_mean")
    if acc is None:
        return f"**{experiment}**"
    std = metrics.get("test_acc_std", 0.0)
    lines = [f"**{experiment}**: test accuracy {acc:.4f} ± {std:.4f} over {len(seeds)} seed(s) {seeds}"]
    m, tags = stats.get("metrics", {}), stats.get("tags", {})
    if "delta_acc" in m:
        ci = (
            f" (CI {m['delta_ci_low']:+.4f} … {m['delta_ci_high']:+.4f})"
            if "delta_ci_low" in m and "delta_ci_high" in m
            else ""
        )
        holm = f", Holm p = {m['p_value_holm']:.3g}" if "p_value_holm" in m else ""
        lines.append(
            f"Δ vs {tags.get('reference', 'reference')}: {m['delta_acc']:+.4f}{ci}"
            f"{', ' + tags['test'] if tags.get('test') else ''}{holm}"
            f"{' — ' + tags['verdict'] if tags.get('verdict') else ''}"
        )
    if tags.get("diagnostics.reading"):
        lines.append(tags["diagnostics.reading"])
    return "\n\n".join(lines)


def log_parent(
    tracker: Tracker,
    runs: Sequence[Mapping[str, Any]],
    ident: Mapping[str, str],
    stats: Mapping[str, Any],
    existing: Mapping[str, Any],
):
    """Log (or update) the parent run of one experiment from its runs (each with its child
    ``run``): seed aggregates plus ``stats`` (``{"metrics", "tags"}`` from the summary). Skipped
    when its ``inputs_sha256`` tag says nothing changed; return ``(parent run, logged)``."""
    experiment = ident["experiment"]
    runs = sorted(runs, key=lambda d: int(d["train"]["seed"]))
    metrics, history = _aggregate(experiment, runs)
    recipe, seeds = runs[0]["recipe"], [int(d["train"]["seed"]) for d in runs]
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
    digest = _content_digest(ident, recipe, metrics, history, seeds_rows, stats)
    parent = existing.get(key)
    if parent is not None and parent.data.tags.get("inputs_sha256") == digest:
        return parent, False
    tags = _base_tags(kind="parent", **ident)
    parent, _ = tracker.ensure_run(key, name=experiment, tags=tags)
    statuses = sorted({str(d["metrics"].get("status") or d["train"].get("status")) for d in runs})
    _log(
        tracker,
        parent,
        params=mlflow_params(recipe),
        metrics={**metrics, **stats.get("metrics", {})},
        history=history,
        tags={
            **tags,
            **stats.get("tags", {}),
            "seeds": json.dumps(seeds),
            "n_seeds": len(seeds),
            "status": ",".join(statuses),
            "mlflow.note.content": _note(experiment, metrics, seeds, stats),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "seeds.json"
        table.write_text(json.dumps(seeds_rows, indent=2))
        _log_artifacts(tracker, parent, {"seeds.json": table})
    _finish(tracker, parent)
    _log(tracker, parent, tags={"inputs_sha256": digest})
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


def _finite(value: Any, *, text: bool = False):
    """``value`` as a finite float (None otherwise); with ``text``: whether it is a non-empty cell."""
    if text:
        return value is not None and str(value) != "" and not (isinstance(value, float) and math.isnan(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_statistics(summary_dir: str | os.PathLike | None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {"metrics": {...}, "tags": {...}}}`` for the parent runs, from the summary's
    ``experiments.csv`` (``STAT_METRICS``, ``STAT_TAGS``) and ``diagnostics.csv`` (``DIAGNOSTIC_*``).
    Missing files, columns and empty cells are skipped."""
    import pandas as pd

    out: dict[str, dict[str, dict[str, Any]]] = {}
    if summary_dir is None:
        return out
    sources = (("experiments.csv", STAT_METRICS, STAT_TAGS), ("diagnostics.csv", DIAGNOSTIC_METRICS, DIAGNOSTIC_TAGS))
    for name, metric_cols, tag_cols in sources:
        path = Path(summary_dir) / name
        if not path.is_file():
            continue
        frame = pd.read_csv(path, dtype={"experiment": str}, keep_default_na=False, na_values=[""])
        if "experiment" not in frame.columns:
            raise TrackingError(f"{path}: missing column 'experiment'")
        for row in frame.to_dict("records"):
            entry = out.setdefault(row["experiment"], {"metrics": {}, "tags": {}})
            entry["metrics"].update({c: _finite(row[c]) for c in metric_cols if _finite(row.get(c)) is not None})
            entry["tags"].update({tag: str(row[c]) for c, tag in tag_cols.items() if _finite(row.get(c), text=True)})
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
        log_file = logs_dir / experiment / f"{run_dir.name}.log" if logs_dir is not None else None
        data.update(
            dir=run_dir,
            digest=files_digest(run_dir),
            log=log_file if log_file is not None and log_file.is_file() else None,
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
    summary_dir: str | os.PathLike | None = None,
    logs_dir: str | os.PathLike | None = None,
    uri: str = DEFAULT_URI,
    mlflow_experiment: str = "ablationlab",
    lock=None,
) -> dict[str, Any]:
    """The study's one MLflow writer: log the child runs of ``run_dirs`` that are new or
    changed (by ``run_key`` and ``files_sha256``), update every parent run (seed aggregates and
    the summary's statistics), tag superseded runs; write ``out`` (the MLflow experiment) and
    ``record`` (``RECORD_COLUMNS``: one row per run and per parent)."""
    table = io.read_json(study_table)
    by_experiment = _load_runs(run_dirs, Path(runs_root), table, Path(logs_dir) if logs_dir else None)
    statistics = read_statistics(summary_dir)
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
            parent, changed = log_parent(tracker, runs, ident, statistics.get(experiment, {}), existing)
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


# ----------------------------------------------------------------------------- live logging
class LiveRun:
    """Hook for ``train.train(on_epoch=...)``: logs each epoch to the run's child run as it
    finishes (and, optionally, system metrics), so a long run can be watched in the UI.

    ``spec``: ``{"uri", "mlflow_experiment", "study", "experiment", "group", "dataset",
    "live": bool, "system_metrics": bool}`` (what :func:`live_spec` builds). The study's
    writer (:func:`track_study`) later completes the same run (same ``run_key``). Logging
    failures never stop training: they are logged as warnings and the writer catches up.
    """

    def __init__(self, spec: Mapping[str, Any], *, recipe: Mapping[str, Any], seed: int):
        self.spec, self.recipe, self.seed = dict(spec), recipe, int(seed)
        self.tracker: Tracker | None = None
        self.run = None
        self.monitor = None
        self.logged: set[int] = set()

    def __enter__(self) -> LiveRun:
        uri = self.spec.get("uri") or DEFAULT_URI
        if os.environ.get("SLURM_JOB_ID") and uri.startswith("sqlite:"):
            # a SQLite file written from compute nodes over a shared file system corrupts
            log.warning(
                "live MLflow logging disabled in a SLURM job: %s is a SQLite store; use a "
                "tracking server (tracking.uri: http://...) to watch cluster runs live",
                redact(uri),
            )
            return self
        try:
            spec = self.spec
            self.tracker = Tracker(spec.get("uri") or DEFAULT_URI, spec["mlflow_experiment"], lock=spec.get("lock"))
            with self.tracker.session():
                _, self.run, _ = open_runs(
                    self.tracker,
                    recipe=self.recipe,
                    seed=self.seed,
                    study=spec["study"],
                    experiment=spec["experiment"],
                    group=spec["group"],
                    dataset=spec["dataset"],
                )
                if self.run.info.status != "RUNNING":
                    self.tracker.call("update_run", self.run.info.run_id, status="RUNNING")
                if "val_loss" in self.run.data.metrics:
                    self.logged = {
                        m.step for m in self.tracker.call("get_metric_history", self.run.info.run_id, "val_loss")
                    }
            if spec.get("system_metrics"):
                # not documented API: MLflow's public switch, mlflow.start_run(log_system_metrics=True),
                # only serves its process-global active run, which end_run() marks FINISHED; this run
                # is the client's and must stay RUNNING for the track job. Checked against the pinned
                # version: tests/test_tracking.py::test_system_metrics_monitor_is_what_live_logging_calls
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    self.run.info.run_id,
                    sampling_interval=float(spec.get("system_metrics_interval", 10)),
                    resume_logging=True,
                    tracking_uri=self.tracker.uri,
                )
                self.monitor.start()
        except Exception as exc:
            log.warning("live MLflow logging disabled: %s", redact(str(exc)))
            self.run = None
        return self

    def on_epoch(self, row: Mapping[str, Any]) -> None:
        """Log one history.csv row (``epoch`` = step) unless that epoch is already logged."""
        if self.run is None or not self.spec.get("live", True):
            return
        from mlflow.entities import Metric

        epoch = int(row["epoch"])
        if epoch in self.logged:
            return
        now = _now_ms()
        batch = [Metric(name, float(row[col]), now, epoch) for col, name in EPOCH_METRICS.items() if col in row]
        try:
            with self.tracker.session():
                self.tracker.call("log_batch", self.run.info.run_id, metrics=batch)
            self.logged.add(epoch)
        except Exception as exc:  # stop trying: a down server would cost every epoch its retries
            log.warning(
                "live MLflow logging of epoch %d failed, stopped for this run (the track job logs every "
                "epoch later): %s",
                epoch,
                redact(str(exc)),
            )
            self.run = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        if self.run is not None and exc_type is not None:
            with contextlib.suppress(Exception), self.tracker.session():
                self.tracker.call("set_terminated", self.run.info.run_id, "FAILED")


@contextlib.contextmanager
def live_run(
    spec: str | Mapping[str, Any] | None, *, recipe: Mapping[str, Any], seed: int
) -> Iterator[Callable[[Mapping[str, Any]], None] | None]:
    """Yield an ``on_epoch`` callback for ``train.train`` (None when ``spec`` is empty/off).

    ``spec`` is a dict or its JSON text (the train CLI's ``--track`` option)."""
    if isinstance(spec, str):
        spec = json.loads(spec) if spec.strip() else None
    if not spec or not (spec.get("live") or spec.get("system_metrics")):
        yield None
        return
    with LiveRun(spec, recipe=recipe, seed=seed) as hook:
        yield hook.on_epoch


def live_spec(
    *,
    uri: str,
    mlflow_experiment: str,
    study: str,
    experiment: str,
    group: str,
    dataset: str,
    live: bool,
    system_metrics: bool = False,
) -> str:
    """The JSON text the pipeline passes to ``train --track`` ("" when live logging is off)."""
    if not (live or system_metrics):
        return ""
    return json.dumps(
        {
            "uri": uri,
            "mlflow_experiment": mlflow_experiment,
            "study": study,
            "experiment": experiment,
            "group": group,
            "dataset": dataset,
            "live": bool(live),
            "system_metrics": bool(system_metrics),
        },
        sort_keys=True,
    )


class LiveSpec:
    """:func:`live_spec` as a Snakemake params value of ``train --track``. Not a ``str`` on
    purpose: Snakemake does not compare such params between runs, so switching live logging
    or the tracking server re-trains nothing."""

    def __init__(self, **kwargs):
        self.text = live_spec(**kwargs)

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)


# SQLite's words for a write that failed for want of space, or at the device
_SQLITE_WRITE_ERRORS = {"database or disk is full": errno.ENOSPC, "disk i/o error": errno.EIO}


def store_write_error(exc: BaseException, uri: str) -> OSError | None:
    """A SQLite store's failed write anywhere in ``exc``'s chain (MLflow wraps SQLAlchemy, which wraps
    sqlite3) as the OSError that names the database file (``[Errno 28] No space left on device:
    'results/mlflow.db'``); None for any other error or store."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and uri.startswith("sqlite:///"):
        seen.add(id(exc))
        code = _SQLITE_WRITE_ERRORS.get(str(exc).lower()) if isinstance(exc, sqlite3.OperationalError) else None
        if code:
            return OSError(code, os.strerror(code), _sqlite_path(uri))
        exc = exc.__cause__ or exc.__context__
    return None


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
    p.add_argument("--summary", dest="summary_dir", help="folder with experiments.csv [and diagnostics.csv]")
    p.add_argument("--logs", dest="logs_dir", help="train logs, {logs}/{experiment}/seed{n}.log (attached)")
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
