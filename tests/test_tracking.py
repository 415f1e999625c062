"""The MLflow store, the study's writer (track) and live logging (live_mlflow) against real MLflow stores (temp
SQLite, a real `mlflow server`)."""

from __future__ import annotations

import contextlib
import http.server
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_fixtures import http_server
from helpers import immutable

from ablationlab import io, live_mlflow, mlflow_store, summarize, track
from ablationlab.recipe import complete

CLASSES = ["zero", "one", "two"]


def make_run(run_dir: Path, recipe: dict, seed: int, *, epochs: int = 3, status: str = "finished") -> Path:
    """A contract-conformant run directory (train + evaluate outputs), tiny and fast."""
    import pandas as pd

    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(run_dir / "recipe.json", recipe)
    rows = [
        {
            "epoch": e,
            "train_loss": 1.0 / e + seed,
            "train_acc": 0.5 + 0.1 * e,
            "val_loss": 1.1 / e + seed,
            "val_acc": 0.4 + 0.1 * e,
            "lr": 0.05,
            "seconds": 0.5,
            "images_per_s": 1000.0 + e,
        }
        for e in range(1, epochs + 1)
    ]
    if status == "diverged":
        rows[-1]["train_loss"] = float("nan")
    io.write_csv(run_dir / "history.csv", pd.DataFrame(rows))
    io.write_json(
        run_dir / "train.json",
        {
            "status": status,
            "epochs_run": epochs,
            "best_epoch": epochs,
            "best_val_loss": 1.1 / epochs + seed,
            "best_val_acc": 0.4 + 0.1 * epochs,
            "stop_reason": None,
            "params": 33,
            "params_total": 33,
            "device": "cpu",
            "torch_version": torch.__version__,
            "wall_seconds": 1.5,
            "seed": seed,
            "message": "",
        },
    )
    io.write_json(
        run_dir / "metrics.json",
        {
            "test_loss": 0.7 + 0.01 * seed,
            "test_acc": 0.8 + 0.01 * seed,
            "test_top5": None,
            "per_class_acc": {c: 0.8 for c in CLASSES},
            "n_test": 30,
            "status": status,
        },
    )
    io.write_csv(run_dir / "confusion.csv", pd.DataFrame({"true": CLASSES, **{c: [10, 0, 0] for c in CLASSES}}))
    io.save_torch(run_dir / "weights.pt", torch.nn.Linear(10, 3).state_dict())
    return run_dir


IDENT = {"study": "unit", "dataset": "digits"}


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory) -> Path:
    """An initialised, empty SQLite store (creating the schema takes seconds: done once)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow_store.Tracker(f"sqlite:///{path}", "template").client  # noqa: B018 (creates the store)
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_db):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    shutil.copyfile(empty_db, tmp_path / "db" / "mlflow.db")
    return {"uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "mlflow_experiment": "unit-study"}


@pytest.fixture()
def fresh_store(tmp_path, monkeypatch):
    """A store whose database does not exist yet."""
    monkeypatch.chdir(tmp_path)
    return {"uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "mlflow_experiment": "unit-study"}


def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_store.split_credentials(store["uri"])[0])


def all_runs(store):
    c = client(store)
    exp = c.get_experiment_by_name(store["mlflow_experiment"])
    return c.search_runs([exp.experiment_id], max_results=1000)


def write_table(tmp_path: Path, experiments: dict[str, dict], seeds) -> Path:
    """The study table (results/study/experiments.json) of ``experiments``: each measured against the
    baseline, when there is one."""
    table = {
        "dataset": "digits",
        "seeds": list(seeds),
        "experiments": [
            {
                "id": e,
                "group": e.split("/")[0],
                "variant": e.rpartition("/")[2],
                "reference": "baseline" if e != "baseline" and "baseline" in experiments else None,
                "sweep": None,
                "recipe": r,
            }
            for e, r in experiments.items()
        ],
    }
    path = tmp_path / "study" / "experiments.json"
    io.write_json(path, table)
    return path


def track_all(tmp_path, store, experiments: dict[str, dict], seeds=(0, 1), *, make=True, summary=True) -> dict:
    """Fabricate every (experiment, seed) run (and its train log), summarize them (unless ``summary`` is
    False: the test wrote the summary), then run the study's writer once."""
    dirs = []
    for exp_id, recipe in experiments.items():
        for s in seeds:
            run = tmp_path / "runs" / exp_id / f"seed{s}"
            dirs.append(make_run(run, recipe, s) if make else run)
            log = tmp_path / "logs" / exp_id / f"seed{s}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"train log of {exp_id} seed {s}\n")
    table = write_table(tmp_path, experiments, seeds)
    if summary:
        summarize.summarize(table, tmp_path / "runs", tmp_path / "summary")
    return track.track_study(
        dirs,
        study_table=table,
        runs_root=tmp_path / "runs",
        study="unit",
        out=tmp_path / "mlflow.json",
        record=tmp_path / "summary" / "mlflow.csv",
        summary_dir=tmp_path / "summary",
        logs_dir=tmp_path / "logs",
        **store,
    )


def parent_runs(store) -> dict:
    """The current parent runs by experiment."""
    runs = all_runs(store)
    return {
        r.data.tags["experiment"]: r
        for r in runs
        if r.data.tags["kind"] == "parent" and r.data.tags["superseded"] == "false"
    }


def summary_numbers(summary_dir: Path, name: str = "experiments.csv") -> dict[str, dict[str, float]]:
    """{experiment: {column: value}} of every number in a summary table (empty cells left out)."""
    frame = summarize.read_table(summary_dir / name).set_index("experiment")
    return {
        exp: {c: float(v) for c, v in row.items() if not isinstance(v, str) and v == v}
        for exp, row in frame.to_dict("index").items()
    }


def record(tmp_path) -> dict:
    """The writer's record as {(experiment, seed or ""): row}."""
    import pandas as pd

    rows = pd.read_csv(tmp_path / "summary" / "mlflow.csv", dtype=str, keep_default_na=False).to_dict("records")
    return {(r["experiment"], r["seed"]): r for r in rows}


def metric_points(store, run_ids) -> dict[str, dict[str, int]]:
    """{run id: {metric: number of logged points}}."""
    c = client(store)
    return {rid: {k: len(c.get_metric_history(rid, k)) for k in c.get_run(rid).data.metrics} for rid in run_ids}


# ----------------------------------------------------------------------------- helpers
def test_split_credentials():  # redaction: tests/test_credentials.py
    assert mlflow_store.split_credentials("https://al%40ice:p%3Aw@h:1/p") == ("https://h:1/p", "al@ice", "p:w")


def test_credentials_move_to_mlflow_env_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    t = mlflow_store.Tracker("https://alice:s3cret@mlflow.example.org", "x", lock=tmp_path / "l.lock")
    assert t.uri == "https://mlflow.example.org" and t.redacted == "https://***@mlflow.example.org"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    info = t.run_info(type("R", (), {"info": type("I", (), {"experiment_id": "1", "run_id": "r", "run_name": "n"})})())
    assert "s3cret" not in json.dumps(info)
    assert info["ui_url"] == "https://***@mlflow.example.org/#/experiments/1/runs/r?workflowType=machine_learning"


def test_run_key_and_mlflow_params():
    recipe = complete({"augment": [{"name": "hflip", "p": 0.5}]})
    key = mlflow_store.run_key("baseline", "digits", recipe, 0)
    assert key == mlflow_store.run_key("baseline", "digits", json.loads(json.dumps(recipe)), 0)
    others = {
        mlflow_store.run_key("baseline", "digits", recipe, 1),
        mlflow_store.run_key("dropout/p=0.3", "digits", recipe, 0),
        mlflow_store.run_key("baseline", "digits", complete({"epochs": 2}), 0),
        mlflow_store.run_key("baseline", "digits", recipe),
    }
    assert key not in others and len(others) == 4
    flat = mlflow_store.mlflow_params(recipe)
    assert flat["optimizer.lr"] == "0.05" and flat["model.batch_norm"] == "false"
    assert json.loads(flat["augment"]) == [{"name": "hflip", "p": 0.5}] and json.loads(flat["model.widths"]) == [
        32,
        64,
        128,
    ]
    assert flat["input.resize"] == "null"


def test_sqlite_memory_store_rejected():
    with pytest.raises(mlflow_store.TrackingError, match="in-memory"):
        mlflow_store.Tracker("sqlite://", "x")


def test_store_problem_names_a_local_store_that_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///results/mlflow.db"
    assert mlflow_store.store_problem(uri) is None  # not there yet: its folder is created on first use
    mlflow_store.Tracker(uri, "x").client  # noqa: B018 (creates the store)
    assert mlflow_store.store_problem(uri) is None
    again = "make it writable, then run the same command again"
    with immutable(tmp_path / "results" / "mlflow.db"):
        assert mlflow_store.store_problem(uri) == (
            f"tracking.uri: [Errno 13] MLflow store not writable: 'results/mlflow.db': {again}"
        )
    with immutable(tmp_path / "results"):  # SQLite writes its journal next to the database
        assert mlflow_store.store_problem(uri) == (
            f"tracking.uri: [Errno 13] Folder of the MLflow store not writable: 'results': {again}"
        )
    assert "in-memory SQLite store is not shared" in mlflow_store.store_problem("sqlite://")
    nested = "sqlite:///store/a/mlflow.db"  # the nearest folder that exists decides
    with immutable(tmp_path):
        assert mlflow_store.store_problem(nested) == (
            f"tracking.uri: [Errno 13] Folder of the MLflow store not writable: '.': {again}"
        )


# ----------------------------------------------------------------------------- runs
def test_writer_logs_parents_children_params_metrics_artifacts(tmp_path, store):
    base = complete({"epochs": 3})
    info = track_all(
        tmp_path, store, {"baseline": base, "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.3}})}
    )
    assert info["logged"] == {"children": 4, "parents": 2}
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    tops = [r for r in runs if r.data.tags["kind"] == "parent"]
    assert len(kids) == 4 and len(tops) == 2
    assert all("seed" not in r.data.tags and r.data.tags["superseded"] == "false" for r in tops)
    by_id = {r.info.run_id: r for r in runs}
    c = client(store)
    for kid in kids:
        tags = kid.data.tags
        assert {
            "run_key",
            "experiment",
            "group",
            "seed",
            "study",
            "dataset",
            "device",
            "status",
            "files_sha256",
        } <= set(tags)
        assert tags["status"] == "finished" and tags["superseded"] == "false" and tags["dataset"] == "digits"
        parent = by_id[tags["mlflow.parentRunId"]]
        assert parent.data.tags["experiment"] == tags["experiment"]
        assert kid.info.run_name == f"{tags['experiment']}/seed{tags['seed']}" and kid.info.status == "FINISHED"
        # the run spans the training (wall_seconds 1.5, ending when train.json was written), not the writer
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
    kid = next(k for k in kids if k.data.tags["experiment"] == "baseline" and k.data.tags["seed"] == "0")
    names = {a.path for a in c.list_artifacts(kid.info.run_id)}
    assert names == {
        "history.csv",
        "metrics.json",
        "confusion.csv",
        "weights.pt",
        "recipe.json",
        "train.json",
        "train.log",
    }
    local = c.download_artifacts(kid.info.run_id, "weights.pt", str(tmp_path / "dl"))
    state = torch.load(local, weights_only=True)
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (3, 10)
    assert (
        Path(c.download_artifacts(kid.info.run_id, "train.log", str(tmp_path / "dl")))
        .read_text()
        .startswith("train log of baseline seed 0")
    )
    # parent: the summary's numbers (test_parent_runs_carry_exactly_the_summary), no curves of its own
    rec = record(tmp_path)
    parent = by_id[rec[("baseline", "")]["mlflow_run_id"]]
    assert parent.data.metrics["test_acc_mean"] == pytest.approx(0.805)
    assert parent.data.metrics["test_acc_std"] == pytest.approx(0.00707107, rel=1e-4)
    assert parent.data.metrics["n_seeds"] == 2 and parent.data.tags["seeds"] == "[0, 1]"
    assert "val_loss" not in parent.data.metrics  # per epoch: the children's
    assert parent.data.tags["run_key"] == mlflow_store.run_key("baseline", "digits", base)
    assert "delta_acc" not in parent.data.metrics  # the baseline is compared with nothing
    seeds = json.loads(Path(c.download_artifacts(parent.info.run_id, "seeds.json", str(tmp_path / "dl"))).read_text())
    assert [(r["seed"], r["run_id"]) for r in seeds] == [
        (s, rec[("baseline", str(s))]["mlflow_run_id"]) for s in (0, 1)
    ]
    # the record: one row per run and per parent; mlflow.json: the MLflow experiment
    assert set(rec) == {(e, s) for e in ("baseline", "dropout/p=0.3") for s in ("0", "1", "")}
    row = rec[("baseline", "0")]
    assert row["mlflow_run_id"] == kid.info.run_id and row["kind"] == "child"
    assert (
        row["mlflow_url"]
        == f"#/experiments/{kid.info.experiment_id}/runs/{kid.info.run_id}?workflowType=machine_learning"
    )
    assert row["mlflow_parent_run_id"] == parent.info.run_id and row["run_key"] == kid.data.tags["run_key"]
    assert io.read_json(tmp_path / "mlflow.json") == {**info, "experiment_id": kid.info.experiment_id}
    assert info["tracking_uri"] == store["uri"] and info["experiment_name"] == store["mlflow_experiment"]
    # artifacts went next to the database, not into ./mlruns
    assert (tmp_path / "db" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_parent_runs_carry_exactly_the_summary(tmp_path, store):
    """Every number of experiments.csv and diagnostics.csv, unchanged, and nothing else; their text as tags."""
    exps = {
        "baseline": complete({"epochs": 3}),
        "bn/on": complete({"epochs": 3, "model": {"batch_norm": True}}),
        "bn/off": complete({"epochs": 3, "model": {"dropout": 0.1}}),
    }
    track_all(tmp_path, store, exps, seeds=(0, 1, 2))
    parents = parent_runs(store)
    experiments, diagnosis = (
        summary_numbers(tmp_path / "summary"),
        summary_numbers(tmp_path / "summary", "diagnostics.csv"),
    )
    assert set(parents) == set(experiments) == set(exps)
    for exp, parent in parents.items():
        assert parent.data.metrics == {**diagnosis[exp], **experiments[exp]}, exp
        assert set(experiments[exp]).isdisjoint(diagnosis[exp])
    row = summarize.read_table(tmp_path / "summary" / "experiments.csv").set_index("experiment").loc["bn/on"]
    tags = parents["bn/on"].data.tags
    assert {k: tags[k] for k in ("reference", "test", "effect_size_kind", "verdict", "status", "variant")} == {
        k: row[k] for k in ("reference", "test", "effect_size_kind", "verdict", "status", "variant")
    }
    assert tags["test"] == "paired_t" and tags["verdict"] in tags["mlflow.note.content"]
    assert "verdict" not in parents["baseline"].data.tags and "reference" not in parents["baseline"].data.tags
    # a new reading of the curves (a new summary): only the parents are logged again, no child
    frame = summarize.read_table(tmp_path / "summary" / "diagnostics.csv")
    frame.loc[frame["experiment"] == "bn/on", ["flags", "reading"]] = ["overfitting", "Lowest at epoch 2 of 3."]
    io.write_csv(tmp_path / "summary" / "diagnostics.csv", frame)
    info = track_all(tmp_path, store, exps, seeds=(0, 1, 2), make=False, summary=False)
    assert info["logged"] == {"children": 0, "parents": 1}
    bn = parent_runs(store)["bn/on"]
    assert bn.data.tags["diagnostics.flags"] == "overfitting"
    assert (
        bn.data.tags["diagnostics.reading"] == "Lowest at epoch 2 of 3."
        and "epoch 2" in bn.data.tags["mlflow.note.content"]
    )
    assert len(client(store).get_metric_history(bn.info.run_id, "test_acc_mean")) == 1  # unchanged: no new point


def test_the_writer_needs_the_summary_of_every_run(tmp_path, store):
    exps = {"baseline": complete({"epochs": 3})}
    with pytest.raises(mlflow_store.TrackingError, match=r"experiments.csv: summary file not found"):
        track_all(tmp_path, store, exps, summary=False)
    summarize.summarize(write_table(tmp_path, exps, (0, 1)), tmp_path / "runs", tmp_path / "summary")
    more = {**exps, "lr/high": complete({"optimizer": {"lr": 0.1}})}
    with pytest.raises(mlflow_store.TrackingError, match=r"lacks experiments \['lr/high'\]: re-run summarize"):
        track_all(tmp_path, store, more, summary=False)


def test_writer_logs_only_new_or_changed_runs_and_supersedes(tmp_path, store):
    exps = {"baseline": complete({"epochs": 3}), "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.3}})}
    first = track_all(tmp_path, store, exps)
    before = {r.info.run_id for r in all_runs(store)}
    points = metric_points(store, before)
    assert points[record(tmp_path)[("baseline", "0")]["mlflow_run_id"]]["val_acc"] == 3
    again = track_all(tmp_path, store, exps)  # the same files rewritten: nothing to log
    assert again["logged"] == {"children": 0, "parents": 0} and again["superseded"] == 0
    assert {r.info.run_id for r in all_runs(store)} == before and metric_points(store, before) == points
    assert again == {**first, "logged": again["logged"]}
    # one retrained run (same recipe, new results): only it is logged again, and the parents whose summary
    # rows changed: its own and the variant's, whose Δ is measured against it
    metrics_json = tmp_path / "runs" / "baseline" / "seed1" / "metrics.json"
    io.write_json(metrics_json, {**io.read_json(metrics_json), "test_acc": 0.9})
    info = track_all(tmp_path, store, exps, make=False)
    assert info["logged"] == {"children": 1, "parents": 2}
    changed = record(tmp_path)[("baseline", "1")]["mlflow_run_id"]
    assert client(store).get_run(changed).data.metrics["test_acc"] == pytest.approx(0.9)
    after = metric_points(store, before)
    others = set(before) - {changed} - {record(tmp_path)[(e, "")]["mlflow_run_id"] for e in exps}
    assert {k: after[k] for k in others} == {k: points[k] for k in others}
    points = after
    # change one variant: only its parent + children are new, the old ones are superseded, and
    # every other run keeps its id and its metric points
    changed = {**exps, "dropout/p=0.3": complete({"epochs": 3, "model": {"dropout": 0.5}})}
    for seed in (0, 1):  # retrained: the other runs' files stay as they are
        make_run(tmp_path / "runs" / "dropout/p=0.3" / f"seed{seed}", changed["dropout/p=0.3"], seed)
    info = track_all(tmp_path, store, changed, make=False)
    assert info["logged"] == {"children": 2, "parents": 1} and info["superseded"] == 3
    runs = all_runs(store)
    new = [r for r in runs if r.info.run_id not in before]
    assert len(new) == 3 and {r.data.tags["experiment"] for r in new} == {"dropout/p=0.3"}
    assert all(r.data.tags["superseded"] == "false" for r in new)
    old_dropout = [r for r in runs if r.info.run_id in before and r.data.tags["experiment"] == "dropout/p=0.3"]
    assert len(old_dropout) == 3 and all(r.data.tags["superseded"] == "true" for r in old_dropout)
    baseline = {r.info.run_id for r in runs if r.data.tags["experiment"] == "baseline"}
    assert all(r.data.tags["superseded"] == "false" for r in runs if r.info.run_id in baseline)
    assert metric_points(store, baseline) == {k: points[k] for k in baseline}
    assert {(e, s) for (e, s), row in record(tmp_path).items() if row["mlflow_run_id"] not in before} == {
        ("dropout/p=0.3", s) for s in ("0", "1", "")
    }
    # changing it back re-activates the old runs (same files: nothing to log) instead of creating more
    for seed in (0, 1):
        make_run(tmp_path / "runs" / "dropout/p=0.3" / f"seed{seed}", exps["dropout/p=0.3"], seed)
    info = track_all(tmp_path, store, exps, make=False)
    runs = all_runs(store)
    assert len(runs) == 9 and info["logged"]["children"] == 0
    assert {r.info.run_id for r in runs if r.data.tags["superseded"] == "false"} == before


def test_writer_store_calls_are_a_few_per_run_and_searches_do_not_grow(tmp_path, store, monkeypatch):
    from mlflow import MlflowClient

    calls: dict[str, int] = {}
    for name in (
        "search_runs",
        "create_run",
        "log_batch",
        "set_tag",
        "set_terminated",
        "log_artifact",
        "log_artifacts",
    ):
        method = getattr(MlflowClient, name)

        def counted(self, *args, _name=name, _method=method, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, counted)
    exps = {f"dropout/p={p}": complete({"epochs": 3, "model": {"dropout": p}}) for p in (0.1, 0.2, 0.3)}
    info = track_all(tmp_path, store, exps)
    assert info["logged"] == {"children": 6, "parents": 3}
    writes = {k: v for k, v in calls.items() if k != "search_runs"}
    # per run: created, one batch (params, metrics, tags), its artifacts, finished, files_sha256/inputs_sha256
    assert writes == {"create_run": 9, "log_batch": 18, "log_artifacts": 9, "set_terminated": 9}
    assert calls["search_runs"] <= 3  # the store is searched a fixed number of times, not once per run


def test_missing_run_file_names_it(tmp_path, fresh_store):
    run = make_run(tmp_path / "runs" / "baseline" / "seed0", complete(), 0)
    (run / "confusion.csv").unlink()
    with pytest.raises(mlflow_store.TrackingError, match="confusion.csv"):
        track_all(tmp_path, fresh_store, {"baseline": complete()}, seeds=(0,), make=False)
    assert not Path(fresh_store["uri"].removeprefix("sqlite:///")).exists()  # failed before touching MLflow
    with pytest.raises(mlflow_store.TrackingError, match="'other' is not in the study table"):
        track.track_study(
            [make_run(tmp_path / "runs" / "other" / "seed0", complete(), 0)],
            study_table=write_table(tmp_path, {"baseline": complete()}, [0]),
            runs_root=tmp_path / "runs",
            study="unit",
            out=tmp_path / "o.json",
            record=tmp_path / "r.csv",
            summary_dir=tmp_path / "summary",
            **fresh_store,
        )


def test_diverged_run_logs_nan_and_status(tmp_path, store):
    make_run(tmp_path / "runs" / "lr/10" / "seed0", complete({"optimizer": {"lr": 10}}), 0, status="diverged")
    track_all(tmp_path, store, {"lr/10": complete({"optimizer": {"lr": 10}})}, seeds=(0,), make=False)
    (kid,) = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
    assert kid.data.tags["status"] == "diverged"
    hist = {m.step: m.value for m in client(store).get_metric_history(kid.info.run_id, "train_loss")}
    assert hist[1] == 1.0 and hist[3] != hist[3]  # NaN kept as NaN


def _live_one(args):
    run_dir, exp_id, recipe, seed, spec = args
    import pandas as pd

    with live_mlflow.live_run(spec, recipe=recipe, seed=seed) as on_epoch:
        for row in pd.read_csv(run_dir / "history.csv").to_dict("records"):
            on_epoch(row)
    return exp_id, seed


def test_eight_parallel_live_loggers_on_fresh_store_then_one_writer(tmp_path, fresh_store):
    store = fresh_store
    exps = {"baseline": complete({"epochs": 2}), "bn/on": complete({"epochs": 2, "model": {"batch_norm": True}})}
    jobs = []
    for s in range(4):
        for e, r in exps.items():
            spec = live_mlflow.live_spec(
                uri=store["uri"],
                mlflow_experiment=store["mlflow_experiment"],
                experiment=e,
                group=e.split("/")[0],
                live=True,
                **IDENT,
            )
            jobs.append((make_run(tmp_path / "runs" / e / f"seed{s}", r, s, epochs=2), e, r, s, spec))
    assert not Path(store["uri"].removeprefix("sqlite:///")).exists()  # no init: jobs race to create it
    mlflow_store.Tracker("sqlite:///" + str(tmp_path / "warm.db"), "warm").client  # noqa: B018 (imports once, before fork)
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_live_one, jobs)
    kids = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
    assert len(kids) == 8 and len({r.data.tags["run_key"] for r in kids}) == 8  # no duplicate, none lost
    for kid in kids:
        assert len(client(store).get_metric_history(kid.info.run_id, "val_loss")) == 2
    live_ids = {r.info.run_id for r in kids}
    info = track_all(tmp_path, store, exps, seeds=range(4), make=False)  # the writer completes those runs
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    assert {r.info.run_id for r in kids} == live_ids and info["logged"]["children"] == 8
    assert all(r.info.status == "FINISHED" and "test_acc" in r.data.metrics for r in kids)
    assert sorted(r.data.tags["experiment"] for r in runs if r.data.tags["kind"] == "parent") == ["baseline", "bn/on"]
    for kid in kids:
        assert len(client(store).get_metric_history(kid.info.run_id, "val_loss")) == 2


def test_live_hook_then_track_completes_same_run(tmp_path, store):
    recipe = complete({"epochs": 3})
    spec = live_mlflow.live_spec(
        uri=store["uri"],
        mlflow_experiment=store["mlflow_experiment"],
        experiment="baseline",
        group="baseline",
        live=True,
        system_metrics=True,
        **IDENT,
    )
    spec = json.dumps({**json.loads(spec), "system_metrics_interval": 0.2})
    run = make_run(tmp_path / "runs" / "baseline" / "seed0", recipe, 0)
    import pandas as pd

    rows = pd.read_csv(run / "history.csv").to_dict("records")
    with live_mlflow.live_run(spec, recipe=recipe, seed=0) as on_epoch:
        for row in rows[:2]:
            on_epoch(row)
        (kid,) = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
        assert kid.info.status == "RUNNING" and kid.data.metrics["val_acc"] == pytest.approx(0.6)
        time.sleep(1.0)
    with live_mlflow.live_run(spec, recipe=recipe, seed=0) as on_epoch:  # resumed job: epoch 2 again, then 3
        for row in rows[1:]:
            on_epoch(row)
    track_all(tmp_path, store, {"baseline": recipe}, seeds=(0,), make=False)
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    assert len(kids) == 1 and len(runs) == 2 and kids[0].info.status == "FINISHED"
    c = client(store)
    assert sorted(m.step for m in c.get_metric_history(kids[0].info.run_id, "val_acc")) == [1, 2, 3]
    assert any(k.startswith("system/cpu_utilization") for k in kids[0].data.metrics)
    off = live_mlflow.LiveSpec(
        uri=store["uri"],
        mlflow_experiment=store["mlflow_experiment"],
        experiment="baseline",
        group="baseline",
        live=False,
        **IDENT,
    )
    assert not isinstance(off, str) and f"{off}" == ""  # Snakemake does not compare non-builtin params
    with live_mlflow.live_run(str(off), recipe=recipe, seed=0) as on_epoch:
        assert on_epoch is None


# --------------------------------------------------------------------------- unreachable server


def _refused_uri() -> str:
    """http://127.0.0.1:<a free port nobody listens on>: connections are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _track_job(uri: str, tmp_path: Path) -> list[str]:
    """`track study` arguments that write to ``uri`` (the job's own server check comes first)."""
    return ["study", "--uri", uri, "--mlflow-experiment", "x", "--study", "s", "--study-table"] + [
        str(tmp_path / "t.json"),
        "--runs",
        str(tmp_path),
        "--run",
        str(tmp_path / "r"),
        "--summary",
        str(tmp_path),
        "--out",
        str(tmp_path / "i.json"),
        "--record",
        str(tmp_path / "m.csv"),
    ]


def test_unreachable_server_is_one_line_naming_the_uri_within_seconds(tmp_path, monkeypatch, capsys):
    uri = _refused_uri()
    problem = mlflow_store.server_problem(uri)
    assert problem.startswith(f"tracking.uri: MLflow server {uri} is not reachable (") and "\n" not in problem
    assert mlflow_store.server_problem("sqlite:///results/mlflow.db") is None  # local stores need no server
    assert mlflow_store.server_problem(f"http://user:secret@{uri.removeprefix('http://')}").count("secret") == 0

    for key in mlflow_store.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    # the job's own check: one error line, exit 2
    assert track.cli(_track_job(uri, tmp_path)) == 2
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    start = time.monotonic()  # MLflow's own client, with the bounded retries (MLflow's default: about 4 minutes)
    with pytest.raises(Exception, match="Max retries exceeded"):
        track.init(mlflow_store.Tracker(uri, "x", lock=tmp_path / "lock"))
    assert time.monotonic() - start < 30


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server that is not MLflow: every POST gets ``status`` and an HTML page."""

    status = 200

    def do_POST(self):
        page = b"<html><body>Welcome</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serving(handler) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_web_server_that_is_not_mlflow_is_one_line_before_any_logging(tmp_path, capsys):
    """`python -m http.server` answers MLflow's POST with 501; the check names the endpoint."""
    (tmp_path / "www").mkdir()
    with http_server(tmp_path / "www") as (url, _):
        uri = url.rstrip("/")
        problem = mlflow_store.server_problem(uri)
        assert track.cli(_track_job(uri, tmp_path)) == 2
    assert problem == (
        f"tracking.uri: {uri} is not an MLflow tracking server (HTTP 501 from {uri}/api/2.0/mlflow/experiments/"
        "search); point tracking.uri at one (mlflow server ...), or use a local store (sqlite:///results/mlflow.db "
        "needs no server), then run the same command again"
    )
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    assert not (tmp_path / "i.json").exists()
    with _serving(_NotMlflow) as uri:  # 200, but HTML
        assert f"is not an MLflow tracking server (no MLflow answer from {uri}/api/2.0/" in mlflow_store.server_problem(
            uri
        )
    with _serving(type("Denied", (_NotMlflow,), {"status": 401})) as uri:
        assert mlflow_store.server_problem(uri).startswith(
            f"tracking.uri: MLflow server {uri} refused the request (HTTP 401"
        )


# MLflow's undocumented class that LiveRun drives (live_mlflow.py says why), checked at this version
MLFLOW_CHECKED = "3.17.2"


def test_system_metrics_monitor_is_what_live_logging_calls():
    import inspect
    import re

    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    pin = re.search(r'"mlflow==([^"]+)"', (Path(__file__).parents[1] / "pyproject.toml").read_text())[1]
    assert pin == mlflow.__version__ == MLFLOW_CHECKED, (
        f"mlflow {pin} pinned, {mlflow.__version__} installed: live_mlflow.LiveRun uses the undocumented "
        "SystemMetricsMonitor(run_id, sampling_interval=, resume_logging=, tracking_uri=).start()/.finish(); "
        "check it in the new version, then set MLFLOW_CHECKED"
    )
    params = inspect.signature(SystemMetricsMonitor).parameters
    assert {"run_id", "sampling_interval", "resume_logging", "tracking_uri"} <= params.keys()
    assert callable(SystemMetricsMonitor.start) and callable(SystemMetricsMonitor.finish)
