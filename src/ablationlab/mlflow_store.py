"""The study's MLflow store, as the study's writer (:mod:`ablationlab.track`) and live logging from
training (:mod:`ablationlab.live_mlflow`) both use it: one MLflow experiment per study, a run found by its
``run_key`` tag (sha256 of the experiment id, dataset, resolved recipe and seed) and created only when
absent (:func:`open_runs`), never duplicated.

A file lock serialises create-if-absent (and, for SQLite stores, every write, so that eight jobs on one
``mlflow.db`` never see "database is locked" nor a half-created schema), and "database is locked" is
retried (:class:`Tracker`). Credentials never leave it: a URI such as ``https://user:pass@host`` is split
into MLflow's ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` environment variables and a clean URI
(:func:`export_credentials`), and every URI written or printed goes through
:func:`ablationlab.credentials.redact`.
"""

from __future__ import annotations

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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ablationlab import io, layout
from ablationlab.credentials import redact
from ablationlab.keypath import flatten
from ablationlab.provenance import git_commit

log = logging.getLogger(__name__)

_git_commit = functools.cache(git_commit)  # one git call per process, not one per run
DEFAULT_URI = f"sqlite:///{layout.MLFLOW_DB}"
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


def store_problem(uri: str, timeout: float = 10.0) -> str | None:
    """One line naming why jobs could not write the tracking store ``uri``, else None: a server's
    problem (:func:`server_problem`), or a SQLite database that is read-only (``chattr +i``, a
    read-only mount) or whose folder is (SQLite writes its journal and the lock next to it)."""
    if str(uri).startswith(("http://", "https://")):
        return server_problem(uri, timeout)
    try:
        path = _sqlite_path(uri)
    except TrackingError as exc:  # an in-memory store
        return str(exc)
    if path is None:
        return None
    db = Path(path)
    if db.exists() and not os.access(db, os.W_OK):
        return _not_writable("MLflow store", db)
    folder = db.parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return _not_writable("Folder of the MLflow store", folder)
    return None


def _not_writable(what: str, path: Path) -> str:
    error = OSError(errno.EACCES, f"{what} not writable", str(path))
    return f"tracking.uri: {error}: make it writable, then run the same command again"


def _not_mlflow(uri: str, why: str) -> str:
    return (
        f"tracking.uri: {redact(uri)} is not an MLflow tracking server ({why}); point tracking.uri at one "
        f"(mlflow server ...), or use a local store ({_NO_SERVER_NEEDED}), then run the same command again"
    )


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


def now_ms() -> int:
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
                else Path(layout.RESULTS) / f".mlflow-{hashlib.sha256(clean.encode()).hexdigest()[:12]}.lock"
            )
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock))
        self._client = None
        self._experiment_id: str | None = None
        self._held = False  # a SQLite session holds the lock
        self._keys: dict[str, str] | None = None  # run_key -> run id, read once in a session

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
        if not self.sqlite_path:
            yield self
            return
        with self.lock:
            self._held = True  # no other writer until the lock is released: run keys read once (ensure_run)
            try:
                yield self
            finally:
                self._held, self._keys = False, None

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
            if self._held and self._keys is None:
                self._keys = {}
                for run in self.find({}):  # oldest first: the run a search for its key finds
                    self._keys.setdefault(run.data.tags.get("run_key"), run.info.run_id)
            if self._keys is not None:
                if key in self._keys:
                    return self.call("get_run", self._keys[key]), False
            else:
                runs = self.find({"run_key": key})
                if runs:
                    return runs[0], False
            tags = {**tags, "run_key": key}
            run = self.call("create_run", self.experiment_id, tags=tags, run_name=name, start_time=start_time)
            if self._keys is not None:
                self._keys[key] = run.info.run_id
            return run, True

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


# ----------------------------------------------------------------------------- runs
def log_missing(tracker: Tracker, run, *, params=None, tags=None, metrics=None, history=None) -> None:
    """Log what ``run`` lacks: params/metrics/epoch rows already there are skipped."""
    from mlflow.entities import Metric, Param, RunTag

    rid, now = run.info.run_id, now_ms()
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


def base_tags(*, study: str, experiment: str, group: str, dataset: str, kind: str) -> dict[str, str]:
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
    log_params: bool = True,
):
    """``(parent, child, created)`` for one seed, both created if absent (new runs start at
    ``start_time``, ms since the epoch, default now: the parent when its first seed started
    training, roughly); params logged on creation unless ``log_params`` is false (the caller
    logs them with the rest of the run in one batch)."""
    tags = base_tags(study=study, experiment=experiment, group=group, dataset=dataset, kind="parent")
    params = mlflow_params(recipe)
    parent, created = tracker.ensure_run(
        run_key(experiment, dataset, recipe), name=experiment, tags=tags, start_time=start_time
    )
    if created and log_params:
        log_missing(tracker, parent, params=params)
    child_tags = {**tags, "kind": "child", "seed": str(seed), "mlflow.parentRunId": parent.info.run_id}
    child, created = tracker.ensure_run(
        run_key(experiment, dataset, recipe, seed),
        name=f"{experiment}/seed{seed}",
        tags=child_tags,
        start_time=start_time,
    )
    if created and log_params:
        log_missing(tracker, child, params=params)
        child = tracker.call("get_run", child.info.run_id)
    return parent, child, created
