"""Live MLflow tracking of a training run (``train --track SPEC``): each epoch logged to the run's child
run as it finishes, and optionally system metrics, so a long run can be watched in the UI.

The train jobs import this module only when tracking; it is not one of their code inputs
(``ablationlab.stages.EXCLUDED``): live logging never changes a run's files. The study's writer
(:mod:`ablationlab.track`) later completes the same runs (:mod:`ablationlab.mlflow_store`: found by
their ``run_key``), and catches up on whatever live logging missed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ablationlab.credentials import redact
from ablationlab.mlflow_store import DEFAULT_URI, EPOCH_METRICS, Tracker, now_ms, open_runs

log = logging.getLogger(__name__)


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
        now = now_ms()
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
