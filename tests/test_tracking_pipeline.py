"""The smoke preset through Snakemake into MLflow: a SQLite store, re-runs, a changed variant,
then a real `mlflow server` (credentials in the URI, never written anywhere).

The tests share one working directory and run in order (each builds on the previous state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from ablationlab import io, mlflow_store, summarize

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free localhost port (SQLite backend, proxied artifacts)."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
    ]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (the server keeps it open)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def snakemake(workdir: Path, *args: str, overlay: dict | None = None, until: tuple = ("--until", "track")) -> str:
    """Run the workflow up to the MLflow writer (rule track; ``until=()``: all of it); return its output
    (fails the test on error).

    ``overlay`` keys are added to the config overlay the earlier calls left (workdir/overlay.yaml)."""
    configs = [str(REPO / "presets" / "smoke.yaml")]
    path = workdir / "overlay.yaml"
    if overlay:
        path.write_text(yaml.safe_dump({**(yaml.safe_load(path.read_text()) if path.exists() else {}), **overlay}))
    if path.exists():
        configs.append(str(path))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        "2",
        "--configfile",
        *configs,
        *until,
        *args,
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def runs(uri: str, name: str = "smoke") -> list:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(name)
    return c.search_runs([exp.experiment_id], max_results=1000)


def record(workdir: Path) -> dict[tuple[str, str], dict]:
    """The MLflow writer's results/summary/mlflow.csv as {(experiment, seed or ""): row}."""
    import pandas as pd

    rows = pd.read_csv(workdir / "results/summary/mlflow.csv", dtype=str, keep_default_na=False).to_dict("records")
    return {(r["experiment"], r["seed"]): r for r in rows}


def metric_points(workdir: Path, run_ids) -> dict[str, dict[str, int]]:
    """{run id: {metric: number of logged points}} in the SQLite store."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri(workdir))
    return {rid: {k: len(c.get_metric_history(rid, k)) for k in c.get_run(rid).data.metrics} for rid in run_ids}


def mtimes(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime for p in (workdir / "results/runs").rglob("weights.pt")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("smoke")
    shutil.copy(REPO / "config.yaml", wd / "config.yaml")
    return wd


@pytest.fixture(scope="module")
def study(workdir) -> dict:
    snakemake(workdir)
    return io.read_json(workdir / "results/study/experiments.json")


def uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'results' / 'mlflow.db'}"


def test_smoke_logs_one_parent_per_experiment_and_one_child_per_seed(workdir, study):
    experiments, seeds = [e["id"] for e in study["experiments"]], study["seeds"]
    all_runs = runs(uri(workdir))
    parents = [r for r in all_runs if r.data.tags["kind"] == "parent"]
    children = [r for r in all_runs if r.data.tags["kind"] == "child"]
    assert sorted(r.data.tags["experiment"] for r in parents) == sorted(experiments)
    assert all("seed" not in r.data.tags for r in parents)
    assert len(children) == len(experiments) * len(seeds)
    assert {(r.data.tags["experiment"], int(r.data.tags["seed"])) for r in children} == {
        (e, s) for e in experiments for s in seeds
    }
    by_id = {r.info.run_id: r for r in all_runs}
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri(workdir))
    for child in children:
        exp, seed = child.data.tags["experiment"], child.data.tags["seed"]
        run_dir = workdir / "results/runs" / exp / f"seed{seed}"
        assert by_id[child.data.tags["mlflow.parentRunId"]].data.tags["experiment"] == exp
        assert child.data.tags["run_key"] and child.data.tags["group"] == exp.split("/")[0]
        recipe = next(e["recipe"] for e in study["experiments"] if e["id"] == exp)
        assert child.data.params == mlflow_store.mlflow_params(recipe)
        epochs = io.read_json(run_dir / "train.json")["epochs_run"]
        history = c.get_metric_history(child.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert child.data.metrics["test_acc"] == pytest.approx(io.read_json(run_dir / "metrics.json")["test_acc"])
        info = record(workdir)[(exp, seed)]
        assert info["mlflow_run_id"] == child.info.run_id and f"/runs/{child.info.run_id}?" in info["mlflow_url"]
    arts = {a.path for a in c.list_artifacts(children[0].info.run_id)}
    assert {"history.csv", "metrics.json", "confusion.csv", "weights.pt", "recipe.json", "train.log"} <= arts
    weights = c.download_artifacts(children[0].info.run_id, "weights.pt", str(workdir / "dl"))
    assert all(isinstance(t, torch.Tensor) for t in torch.load(weights, weights_only=True).values())
    # every parent run carries exactly the summary's numbers: experiments.csv's and diagnostics.csv's
    tables = {
        name: summarize.read_table(workdir / "results/summary" / name).set_index("experiment").to_dict("index")
        for name in ("experiments.csv", "diagnostics.csv")
    }
    numbers = {
        name: {e: {c: float(v) for c, v in row.items() if not isinstance(v, str) and v == v} for e, row in rows.items()}
        for name, rows in tables.items()
    }
    assert {p.data.tags["experiment"] for p in parents} == set(numbers["experiments.csv"])
    for parent in parents:
        exp = parent.data.tags["experiment"]
        assert record(workdir)[(exp, "")]["mlflow_run_id"] == parent.info.run_id
        assert parent.data.metrics == {**numbers["diagnostics.csv"][exp], **numbers["experiments.csv"][exp]}, exp
        assert parent.data.tags["status"] == tables["experiments.csv"][exp]["status"]
        if exp == "baseline":
            assert "delta_acc" not in parent.data.metrics and "verdict" not in parent.data.tags
    info = io.read_json(workdir / "results/mlflow.json")
    assert info["logged"] == {"children": len(children), "parents": len(parents)}


def test_rerun_without_change_adds_no_run(workdir, study):
    before = {r.info.run_id for r in runs(uri(workdir))}
    points = metric_points(workdir, before)
    out = snakemake(workdir)
    assert re.search(r"^total\s+0\s*$|Nothing to be done", out, re.M), out[-2000:]  # no job at all
    out = snakemake(workdir, "--forcerun", "track")  # the writer again: it finds nothing to log
    assert re.search(r"^localrule track:$", out, re.M), out[-2000:]
    assert io.read_json(workdir / "results/mlflow.json")["logged"] == {"children": 0, "parents": 0}
    assert {r.info.run_id for r in runs(uri(workdir))} == before and metric_points(workdir, before) == points


def test_report_only_edit_logs_nothing(workdir, study):
    before = {r.info.run_id for r in runs(uri(workdir))}
    points = metric_points(workdir, before)
    smoke = yaml.safe_load((REPO / "presets/smoke.yaml").read_text())
    smoke["ablations"][0]["notes"] = "Edited notes: only the report changes."
    edit = {"ablations": smoke["ablations"], "report": {"title": "Edited title"}}
    planned = snakemake(workdir, "-n", overlay=edit, until=())  # the whole workflow: the edit is seen
    assert re.search(r"^(local)?rule study:$", planned, re.M) and re.search(
        r"^(local)?rule render_report:$", planned, re.M
    )
    out = snakemake(workdir)
    assert not re.search(r"^(local)?rule (track|summarize):$", planned + out, re.M), out[
        -2000:
    ]  # the writer did not run
    assert {r.info.run_id for r in runs(uri(workdir))} == before and metric_points(workdir, before) == points


def test_changing_one_variant_makes_new_runs_only_for_it(workdir, study):
    before = {r.info.run_id: r for r in runs(uri(workdir))}
    children = {rid for rid, r in before.items() if r.data.tags["kind"] == "child"}
    points = metric_points(workdir, children)
    weights = mtimes(workdir)
    smoke = yaml.safe_load((REPO / "presets/smoke.yaml").read_text())
    changed = next(e for e in study["experiments"] if e["group"] not in ("baseline",) and e["sweep"] is None)
    group = next(g for g in smoke["ablations"] if g["id"] == changed["group"])
    group["variants"][changed["variant"]] = {**group["variants"][changed["variant"]], "loss": {"label_smoothing": 0.1}}
    snakemake(workdir, overlay={"ablations": smoke["ablations"]})
    after = runs(uri(workdir))
    new = [r for r in after if r.info.run_id not in before]
    assert {r.data.tags["experiment"] for r in new} == {changed["id"]}
    assert len(new) == 1 + len(study["seeds"]) and all(r.data.tags["superseded"] == "false" for r in new)
    old = [r for r in after if r.info.run_id in before]
    assert all((r.data.tags["superseded"] == "true") == (r.data.tags["experiment"] == changed["id"]) for r in old)
    retrained = {k for k, t in mtimes(workdir).items() if weights[k] != t}
    assert retrained == {f"results/runs/{changed['id']}/seed{s}/weights.pt" for s in study["seeds"]}
    # the writer logged only that experiment's runs: every other child keeps its id and metric points
    assert io.read_json(workdir / "results/mlflow.json")["logged"]["children"] == len(study["seeds"])
    others = {rid for rid in children if before[rid].data.tags["experiment"] != changed["id"]}
    current = {row["mlflow_run_id"] for (exp, seed), row in record(workdir).items() if seed and exp != changed["id"]}
    assert current == others and metric_points(workdir, others) == {k: points[k] for k in others}


def test_tracking_server_gets_the_study_without_retraining(workdir, study, mlflow_server):
    server, server_artifacts = mlflow_server
    secret = "pw-Zq81x"
    weights = mtimes(workdir)
    out = snakemake(workdir, overlay={"tracking": {"uri": server.replace("http://", f"http://alice:{secret}@")}})
    assert mtimes(workdir) == weights  # a new tracking store re-tracks, it does not re-train
    info = io.read_json(workdir / "results/mlflow.json")
    found = _post(
        f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [info["experiment_id"]], "max_results": 1000}
    )["runs"]
    n_exp = len(study["experiments"])
    assert len(found) == n_exp * (1 + len(study["seeds"]))
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    assert sorted(t["experiment"] for t in tags if t["kind"] == "parent") == sorted(
        e["id"] for e in study["experiments"]
    )
    for run, tag in zip(found, tags):
        metrics = {m["key"] for m in run["data"].get("metrics", [])}
        assert (
            {"test_acc_mean", "n_seeds"} <= metrics if tag["kind"] == "parent" else {"test_acc", "val_acc"} <= metrics
        )
    child = record(workdir)[("baseline", "0")]
    child["run_id"] = child["mlflow_run_id"]
    history = _get(f"{server}/api/2.0/mlflow/metrics/get-history?run_id={child['run_id']}&metric_key=val_loss")
    assert [m["step"] for m in history["metrics"]] == list(range(1, len(history["metrics"]) + 1))
    files = _get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={child['run_id']}")["files"]
    assert "weights.pt" in {f["path"] for f in files}
    assert any(server_artifacts.rglob("weights.pt"))  # artifacts went where the server says
    # jobs got the bare URI (the credentials went into MLFLOW_TRACKING_USERNAME/PASSWORD)
    assert info["tracking_uri"] == server and child["mlflow_url"].startswith(server + "/#/experiments/")
    # the password is in no output file, log, Snakemake metadata or console output
    assert secret not in out
    for path in [*workdir.joinpath("results").rglob("*"), *workdir.joinpath(".snakemake").rglob("*")]:
        if path.is_file() and path.suffix not in (".pt", ".npz", ".db", ".png"):
            assert secret not in path.read_text(errors="ignore"), path


def test_live_logging_retrains_nothing_and_logs_each_epoch_during_training(workdir, study):
    weights = mtimes(workdir)
    live = {"tracking": {"uri": mlflow_store.DEFAULT_URI, "live": True}}
    snakemake(workdir, overlay=live)  # back on the SQLite store, live logging on
    assert mtimes(workdir) == weights  # switching live logging on re-trains nothing

    smoke = yaml.safe_load((REPO / "presets/smoke.yaml").read_text())
    group = next(g for g in smoke["ablations"] if g.get("sweep"))
    group["sweep"]["values"] = [0.25]  # a new experiment: its train job logs to MLflow itself
    snakemake(workdir, overlay={"ablations": smoke["ablations"]})
    exp = f"{group['id']}/{group['sweep']['label']}=0.25"
    kids = [r for r in runs(uri(workdir)) if r.data.tags.get("experiment") == exp and r.data.tags["kind"] == "child"]
    assert len(kids) == len(study["seeds"]) and all(r.info.status == "FINISHED" for r in kids)
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri(workdir))
    for kid in kids:
        run_dir = workdir / "results/runs" / exp / f"seed{kid.data.tags['seed']}"
        history = c.get_metric_history(kid.info.run_id, "val_loss")
        epochs = io.read_json(run_dir / "train.json")["epochs_run"]
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # logged once, completed by track
        # logged while training: before the train job wrote its train.json
        assert max(m.timestamp for m in history) <= (run_dir / "train.json").stat().st_mtime * 1000
        assert record(workdir)[(exp, kid.data.tags["seed"])]["mlflow_run_id"] == kid.info.run_id
