"""ablationlab.tracking against real MLflow stores (temp SQLite, a real `mlflow server`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from ablationlab import io, tracking
from ablationlab.recipe import complete

CLASSES = ["zero", "one", "two"]


def make_run(run_dir: Path, recipe: dict, seed: int, *, epochs: int = 3, status: str = "finished") -> Path:
    """A contract-conformant run directory (train + evaluate outputs), tiny and fast."""
    import pandas as pd

    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(run_dir / "recipe.json", recipe)
    rows = [{"epoch": e, "train_loss": 1.0 / e + seed, "train_acc": 0.5 + 0.1 * e, "val_loss": 1.1 / e + seed,
             "val_acc": 0.4 + 0.1 * e, "lr": 0.05, "seconds": 0.5, "images_per_s": 1000.0 + e}
            for e in range(1, epochs + 1)]
    if status == "diverged":
        rows[-1]["train_loss"] = float("nan")
    io.write_csv(run_dir / "history.csv", pd.DataFrame(rows))
    io.write_json(run_dir / "train.json", {
        "status": status, "epochs_run": epochs, "best_epoch": epochs, "best_val_loss": 1.1 / epochs + seed,
        "best_val_acc": 0.4 + 0.1 * epochs, "stop_reason": None, "params": 33, "params_total": 33,
        "device": "cpu", "torch_version": torch.__version__, "wall_seconds": 1.5, "seed": seed, "message": ""})
    io.write_json(run_dir / "metrics.json", {
        "test_loss": 0.7 + 0.01 * seed, "test_acc": 0.8 + 0.01 * seed, "test_top5": None,
        "per_class_acc": {c: 0.8 for c in CLASSES}, "n_test": 30, "status": status})
    io.write_csv(run_dir / "confusion.csv", pd.DataFrame({"true": CLASSES, **{c: [10, 0, 0] for c in CLASSES}}))
    io.save_torch(run_dir / "weights.pt", torch.nn.Linear(10, 3).state_dict())
    return run_dir


IDENT = {"study": "unit", "dataset": "digits"}


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory) -> Path:
    """An initialised, empty SQLite store (creating the schema takes seconds: done once)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.Tracker(f"sqlite:///{path}", "template").client
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_db):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    shutil.copyfile(empty_db, tmp_path / "db" / "mlflow.db")
    return {"uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "name": "unit-study"}


@pytest.fixture()
def fresh_store(tmp_path, monkeypatch):
    """A store whose database does not exist yet."""
    monkeypatch.chdir(tmp_path)
    return {"uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "name": "unit-study"}


def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking.split_credentials(store["uri"])[0])


def all_runs(store):
    c = client(store)
    exp = c.get_experiment_by_name(store["name"])
    return c.search_runs([exp.experiment_id], max_results=1000)


def track_all(tmp_path, store, experiments: dict[str, dict], seeds=(0, 1)) -> dict:
    """Fabricate + track every (experiment, seed), then the parents; return parent infos."""
    parents = {}
    for exp_id, recipe in experiments.items():
        group = exp_id.split("/")[0]
        dirs = [make_run(tmp_path / "runs" / exp_id / f"seed{s}", recipe, s) for s in seeds]
        for d in dirs:
            tracking.track_run(d, experiment=exp_id, group=group, log_file=d / "history.csv", **IDENT, **store)
        parents[exp_id] = tracking.track_experiment(
            dirs, experiment=exp_id, group=group, out=tmp_path / "runs" / exp_id / "mlflow.json", **IDENT, **store)
    return parents


# ----------------------------------------------------------------------------- helpers
def test_redact_and_split_credentials():
    assert tracking.redact("https://alice:s3cret@mlflow.example.org:5000/x") == "https://***@mlflow.example.org:5000/x"
    assert tracking.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "tok123" not in tracking.redact("https://h/?api_token=tok123&x=1")
    assert tracking.redact("sqlite:///results/mlflow.db") == "sqlite:///results/mlflow.db"
    assert tracking.redact("POST https://u:p@ss@h/api failed") == "POST https://***@h/api failed"
    assert tracking.redact("postgresql://u:pw@db/m?password=zz&x=1") == "postgresql://***@db/m?password=***&x=1"
    assert tracking.split_credentials("https://al%40ice:p%3Aw@h:1/p") == ("https://h:1/p", "al@ice", "p:w")


def test_credentials_move_to_mlflow_env_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    t = tracking.Tracker("https://alice:s3cret@mlflow.example.org", "x", lock=tmp_path / "l.lock")
    assert t.uri == "https://mlflow.example.org" and t.redacted == "https://***@mlflow.example.org"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    info = t.run_info(type("R", (), {"info": type("I", (), {"experiment_id": "1", "run_id": "r",
                                                             "run_name": "n"})})())
    assert "s3cret" not in json.dumps(info)
    assert info["ui_url"] == "https://***@mlflow.example.org/#/experiments/1/runs/r?workflowType=machine_learning"


def test_run_key_and_flatten():
    recipe = complete({"augment": [{"name": "hflip", "p": 0.5}]})
    key = tracking.run_key("baseline", "digits", recipe, 0)
    assert key == tracking.run_key("baseline", "digits", json.loads(json.dumps(recipe)), 0)
    others = {tracking.run_key("baseline", "digits", recipe, 1), tracking.run_key("dropout/p=0.3", "digits", recipe, 0),
              tracking.run_key("baseline", "digits", complete({"epochs": 2}), 0),
              tracking.run_key("baseline", "digits", recipe)}
    assert key not in others and len(others) == 4
    flat = tracking.flatten(recipe)
    assert flat["optimizer.lr"] == "0.05" and flat["model.batch_norm"] == "false"
    assert json.loads(flat["augment"]) == [{"name": "hflip", "p": 0.5}] and json.loads(flat["model.widths"]) == [32, 64, 128]
    assert flat["input.resize"] == "null"


def test_sqlite_memory_store_rejected():
    with pytest.raises(tracking.TrackingError, match="in-memory"):
        tracking.Tracker("sqlite://", "x")


# ----------------------------------------------------------------------------- runs
def test_track_runs_parents_children_params_metrics_artifacts(tmp_path, store):
    base = complete({"epochs": 3})
    parents = track_all(tmp_path, store, {"baseline": base, "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.3}})})
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    tops = [r for r in runs if r.data.tags["kind"] == "parent"]
    assert len(kids) == 4 and len(tops) == 2
    assert all("seed" not in r.data.tags and r.data.tags["experiment"] in parents for r in tops)
    by_id = {r.info.run_id: r for r in runs}
    c = client(store)
    for kid in kids:
        tags = kid.data.tags
        assert {"run_key", "experiment", "group", "seed", "study", "dataset", "device", "status"} <= set(tags)
        assert tags["status"] == "finished" and tags["superseded"] == "false" and tags["dataset"] == "digits"
        parent = by_id[tags["mlflow.parentRunId"]]
        assert parent.data.tags["experiment"] == tags["experiment"]
        assert kid.info.run_name == f"{tags['experiment']}/seed{tags['seed']}" and kid.info.status == "FINISHED"
        # the run spans the training (wall_seconds 1.5, ending when train.json was written), not the track job
        train_json = tmp_path / "runs" / tags["experiment"] / f"seed{tags['seed']}" / "train.json"
        assert kid.info.end_time == int(train_json.stat().st_mtime * 1000)
        assert kid.info.end_time - kid.info.start_time == 1500
        assert kid.data.params["optimizer.lr"] == "0.05" and kid.data.params["augment"] == "[]"
        hist = c.get_metric_history(kid.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == [1, 2, 3]
        assert {m.step: round(m.value, 6) for m in hist}[2] == 0.6
        assert {"train_loss", "train_acc", "val_loss", "lr", "epoch_seconds", "images_per_s"} <= set(kid.data.metrics)
        assert kid.data.metrics["best_val_acc"] == pytest.approx(0.7) and kid.data.metrics["best_epoch"] == 3
        assert kid.data.metrics["test_acc"] == pytest.approx(0.8 + 0.01 * int(tags["seed"]))
        assert not any(k.startswith("test_class") for k in kid.data.metrics)  # per class: metrics.json
    kid = kids[0]
    names = {a.path for a in c.list_artifacts(kid.info.run_id)}
    assert names == {"history.csv", "metrics.json", "confusion.csv", "weights.pt", "recipe.json", "train.json", "train.log"}
    local = c.download_artifacts(kid.info.run_id, "weights.pt", str(tmp_path / "dl"))
    state = torch.load(local, weights_only=True)
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (3, 10)
    # parent: seed aggregates computed from the run dirs
    info = parents["baseline"]
    parent = by_id[info["run_id"]]
    assert parent.data.metrics["test_acc_mean"] == pytest.approx(0.805)
    assert parent.data.metrics["test_acc_std"] == pytest.approx(0.00707107, rel=1e-4)
    assert parent.data.metrics["n_seeds"] == 2 and parent.data.tags["seeds"] == "[0, 1]"
    assert sorted(m.step for m in c.get_metric_history(parent.info.run_id, "val_loss")) == [1, 2, 3]
    assert parent.data.tags["run_key"] == tracking.run_key("baseline", "digits", base)
    # mlflow.json records
    child_info = io.read_json(tmp_path / "runs" / "baseline" / "seed0" / "mlflow.json")
    assert child_info["url"] == (f"#/experiments/{kid.info.experiment_id}/runs/{child_info['run_id']}"
                                 "?workflowType=machine_learning")
    assert child_info["parent_run_id"] == info["run_id"] and child_info["tracking_uri"] == store["uri"]
    assert set(info["children"]) == {"0", "1"} and info["children"]["0"] == child_info["run_id"]
    # artifacts went next to the database, not into ./mlruns
    assert (tmp_path / "db" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_retrack_is_idempotent_and_change_supersedes(tmp_path, store):
    exps = {"baseline": complete({"epochs": 3}), "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.3}})}
    first = track_all(tmp_path, store, exps)
    before = {r.info.run_id for r in all_runs(store)}
    c = client(store)
    kid = io.read_json(tmp_path / "runs" / "baseline" / "seed0" / "mlflow.json")["run_id"]
    n_hist = len(c.get_metric_history(kid, "val_acc"))
    n_test = len(c.get_metric_history(kid, "test_acc"))
    again = track_all(tmp_path, store, exps)
    assert {r.info.run_id for r in all_runs(store)} == before and again == first
    assert len(c.get_metric_history(kid, "val_acc")) == n_hist == 3
    assert len(c.get_metric_history(kid, "test_acc")) == n_test == 1
    # change one variant: only its parent + children are new; the old ones are superseded
    changed = {**exps, "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.5}})}
    track_all(tmp_path, store, changed)
    runs = all_runs(store)
    new = [r for r in runs if r.info.run_id not in before]
    assert len(new) == 3 and {r.data.tags["experiment"] for r in new} == {"dropout/p=0.3"}
    assert all(r.data.tags["superseded"] == "false" for r in new)
    old_dropout = [r for r in runs if r.info.run_id in before and r.data.tags["experiment"] == "dropout/p=0.3"]
    assert len(old_dropout) == 3 and all(r.data.tags["superseded"] == "true" for r in old_dropout)
    assert all(r.data.tags["superseded"] == "false" for r in runs if r.data.tags["experiment"] == "baseline")
    # changing it back re-activates the old runs instead of creating more
    track_all(tmp_path, store, exps)
    runs = all_runs(store)
    assert len(runs) == 9
    assert {r.info.run_id for r in runs if r.data.tags["superseded"] == "false"} == before


def test_missing_run_file_names_it(tmp_path, fresh_store):
    store = fresh_store
    run = make_run(tmp_path / "runs" / "baseline" / "seed0", complete(), 0)
    (run / "confusion.csv").unlink()
    with pytest.raises(tracking.TrackingError, match="confusion.csv"):
        tracking.track_run(run, experiment="baseline", group="baseline", **IDENT, **store)
    assert not Path(store["uri"].removeprefix("sqlite:///")).exists()  # failed before touching MLflow


def test_diverged_run_logs_nan_and_status(tmp_path, store):
    run = make_run(tmp_path / "runs" / "lr/10" / "seed0", complete({"optimizer": {"lr": 10}}), 0, status="diverged")
    tracking.track_run(run, experiment="lr/10", group="lr", **IDENT, **store)
    (kid,) = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
    assert kid.data.tags["status"] == "diverged"
    hist = {m.step: m.value for m in client(store).get_metric_history(kid.info.run_id, "train_loss")}
    assert hist[1] == 1.0 and hist[3] != hist[3]  # NaN kept as NaN


def _track_one(args):
    run_dir, exp_id, store = args
    info = tracking.track_run(run_dir, experiment=exp_id, group=exp_id.split("/")[0], **IDENT, **store)
    return info["run_id"]


def test_eight_parallel_track_processes_on_fresh_store(tmp_path, fresh_store):
    store = fresh_store
    exps = {"baseline": complete({"epochs": 2}), "bn/on": complete({"epochs": 2, "model": {"batch_norm": True}})}
    jobs = [(make_run(tmp_path / "runs" / e / f"seed{s}", r, s, epochs=2), e, store)
            for s in range(4) for e, r in exps.items()]
    assert not Path(store["uri"].removeprefix("sqlite:///")).exists()  # no init: jobs race to create it
    tracking.Tracker("sqlite:///" + str(tmp_path / "warm.db"), "warm").client  # imports once, before fork
    with multiprocessing.get_context("fork").Pool(8) as pool:
        ids = pool.map(_track_one, jobs)
    assert len(set(ids)) == 8
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    assert sorted(r.info.run_id for r in kids) == sorted(ids)
    assert len({r.data.tags["run_key"] for r in kids}) == 8
    assert sorted(r.data.tags["experiment"] for r in runs if r.data.tags["kind"] == "parent") == ["baseline", "bn/on"]
    for kid in kids:
        assert len(client(store).get_metric_history(kid.info.run_id, "val_loss")) == 2


def test_live_hook_then_track_completes_same_run(tmp_path, store):
    recipe = complete({"epochs": 3})
    spec = tracking.live_spec(uri=store["uri"], mlflow_experiment=store["name"], experiment="baseline",
                              group="baseline", live=True, system_metrics=True, **IDENT)
    spec = json.dumps({**json.loads(spec), "system_metrics_interval": 0.2})
    run = make_run(tmp_path / "runs" / "baseline" / "seed0", recipe, 0)
    import pandas as pd

    rows = pd.read_csv(run / "history.csv").to_dict("records")
    with tracking.live_run(spec, recipe=recipe, seed=0) as on_epoch:
        for row in rows[:2]:
            on_epoch(row)
        (kid,) = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
        assert kid.info.status == "RUNNING" and kid.data.metrics["val_acc"] == pytest.approx(0.6)
        time.sleep(1.0)
    with tracking.live_run(spec, recipe=recipe, seed=0) as on_epoch:  # resumed job: epoch 2 again, then 3
        for row in rows[1:]:
            on_epoch(row)
    tracking.track_run(run, experiment="baseline", group="baseline", **IDENT, **store)
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    assert len(kids) == 1 and len(runs) == 2 and kids[0].info.status == "FINISHED"
    c = client(store)
    assert sorted(m.step for m in c.get_metric_history(kids[0].info.run_id, "val_acc")) == [1, 2, 3]
    assert any(k.startswith("system/cpu_utilization") for k in kids[0].data.metrics)
    off = tracking.LiveSpec(uri=store["uri"], mlflow_experiment=store["name"], experiment="baseline",
                            group="baseline", live=False, **IDENT)
    assert not isinstance(off, str) and f"{off}" == ""  # Snakemake does not compare non-builtin params
    with tracking.live_run(str(off), recipe=recipe, seed=0) as on_epoch:
        assert on_epoch is None


# --------------------------------------------------------------------------- unreachable server


def _refused_uri() -> str:
    """http://127.0.0.1:<a free port nobody listens on>: connections are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_server_is_one_line_naming_the_uri_within_seconds(tmp_path, monkeypatch, capsys):
    uri = _refused_uri()
    problem = tracking.server_problem(uri)
    assert problem.startswith(f"tracking.uri: MLflow server {uri} is not reachable (") and "\n" not in problem
    assert tracking.server_problem("sqlite:///results/mlflow.db") is None  # local stores need no server
    assert tracking.server_problem(f"http://user:secret@{uri.removeprefix('http://')}").count("secret") == 0

    for key in tracking.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    # the job's own check: one error line, exit 2
    assert tracking.cli(["init", "--uri", uri, "--mlflow-experiment", "x", "--out", str(tmp_path / "i.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    start = time.monotonic()  # MLflow's own client, with the bounded retries (MLflow's default: about 4 minutes)
    with pytest.raises(Exception, match="Max retries exceeded"):
        tracking.init(uri, "x", lock=tmp_path / "lock")
    assert time.monotonic() - start < 30
