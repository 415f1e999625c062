"""ablationlab.tracking against real MLflow stores (temp SQLite, a real `mlflow server`)."""

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

from ablationlab import io, tracking
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
    tracking.Tracker(f"sqlite:///{path}", "template").client  # noqa: B018 (creates the store)
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

    return MlflowClient(tracking_uri=tracking.split_credentials(store["uri"])[0])


def all_runs(store):
    c = client(store)
    exp = c.get_experiment_by_name(store["mlflow_experiment"])
    return c.search_runs([exp.experiment_id], max_results=1000)


def write_table(tmp_path: Path, experiments: dict[str, dict], seeds) -> Path:
    """The study table (results/study/experiments.json) of ``experiments``."""
    table = {
        "dataset": "digits",
        "seeds": list(seeds),
        "experiments": [{"id": e, "group": e.split("/")[0], "recipe": r} for e, r in experiments.items()],
    }
    path = tmp_path / "study" / "experiments.json"
    io.write_json(path, table)
    return path


def track_all(tmp_path, store, experiments: dict[str, dict], seeds=(0, 1), *, make=True) -> dict:
    """Fabricate every (experiment, seed) run (and its train log), then run the study's writer once."""
    dirs = []
    for exp_id, recipe in experiments.items():
        for s in seeds:
            run = tmp_path / "runs" / exp_id / f"seed{s}"
            dirs.append(make_run(run, recipe, s) if make else run)
            log = tmp_path / "logs" / exp_id / f"seed{s}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"train log of {exp_id} seed {s}\n")
    return tracking.track_study(
        dirs,
        study_table=write_table(tmp_path, experiments, seeds),
        runs_root=tmp_path / "runs",
        study="unit",
        out=tmp_path / "mlflow.json",
        record=tmp_path / "summary" / "mlflow.csv",
        summary_dir=tmp_path / "summary",
        logs_dir=tmp_path / "logs",
        **store,
    )


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
    assert tracking.split_credentials("https://al%40ice:p%3Aw@h:1/p") == ("https://h:1/p", "al@ice", "p:w")


def test_credentials_move_to_mlflow_env_vars(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    t = tracking.Tracker("https://alice:s3cret@mlflow.example.org", "x", lock=tmp_path / "l.lock")
    assert t.uri == "https://mlflow.example.org" and t.redacted == "https://***@mlflow.example.org"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    info = t.run_info(type("R", (), {"info": type("I", (), {"experiment_id": "1", "run_id": "r", "run_name": "n"})})())
    assert "s3cret" not in json.dumps(info)
    assert info["ui_url"] == "https://***@mlflow.example.org/#/experiments/1/runs/r?workflowType=machine_learning"


def test_run_key_and_mlflow_params():
    recipe = complete({"augment": [{"name": "hflip", "p": 0.5}]})
    key = tracking.run_key("baseline", "digits", recipe, 0)
    assert key == tracking.run_key("baseline", "digits", json.loads(json.dumps(recipe)), 0)
    others = {
        tracking.run_key("baseline", "digits", recipe, 1),
        tracking.run_key("dropout/p=0.3", "digits", recipe, 0),
        tracking.run_key("baseline", "digits", complete({"epochs": 2}), 0),
        tracking.run_key("baseline", "digits", recipe),
    }
    assert key not in others and len(others) == 4
    flat = tracking.mlflow_params(recipe)
    assert flat["optimizer.lr"] == "0.05" and flat["model.batch_norm"] == "false"
    assert json.loads(flat["augment"]) == [{"name": "hflip", "p": 0.5}] and json.loads(flat["model.widths"]) == [
        32,
        64,
        128,
    ]
    assert flat["input.resize"] == "null"


def test_sqlite_memory_store_rejected():
    with pytest.raises(tracking.TrackingError, match="in-memory"):
        tracking.Tracker("sqlite://", "x")


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
    # parent: seed aggregates computed from the run dirs
    rec = record(tmp_path)
    parent = by_id[rec[("baseline", "")]["mlflow_run_id"]]
    assert parent.data.metrics["test_acc_mean"] == pytest.approx(0.805)
    assert parent.data.metrics["test_acc_std"] == pytest.approx(0.00707107, rel=1e-4)
    assert parent.data.metrics["n_seeds"] == 2 and parent.data.tags["seeds"] == "[0, 1]"
    assert sorted(m.step for m in c.get_metric_history(parent.info.run_id, "val_loss")) == [1, 2, 3]
    assert parent.data.tags["run_key"] == tracking.run_key("baseline", "digits", base)
    assert "delta_acc" not in parent.data.metrics  # no summary in this study: no statistics, no error
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


def test_parent_runs_carry_the_summary_statistics_and_diagnostics(tmp_path, store):
    import pandas as pd

    exps = {"baseline": complete({"epochs": 3}), "bn/on": complete({"epochs": 3, "model": {"batch_norm": True}})}
    stats = {
        "experiment": ["baseline", "bn/on"],
        "reference": ["", "baseline"],
        "test_acc_ci_low": [0.7, 0.8],
        "delta_acc": [None, 0.018],
        "delta_ci_low": [None, 0.011],
        "delta_ci_high": [None, 0.025],
        "test": ["", "paired_t"],
        "p_value": [None, 0.004],
        "p_value_holm": [None, 0.01],
        "q_value": [None, 0.02],
        "effect_size": [None, 2.5],
        "effect_size_kind": ["", "d_z"],
        "prob_improvement": [None, 1.0],
        "mde_acc": [None, 0.009],
        "seeds_needed": [None, 3],
        "verdict": ["", "significant"],
    }
    io.write_csv(tmp_path / "summary" / "experiments.csv", pd.DataFrame(stats))  # no diagnostics.csv yet
    track_all(tmp_path, store, exps)
    parents = {r.data.tags["experiment"]: r for r in all_runs(store) if r.data.tags["kind"] == "parent"}
    bn = parents["bn/on"]
    expected = {
        "delta_acc": 0.018,
        "delta_ci_low": 0.011,
        "delta_ci_high": 0.025,
        "p_value": 0.004,
        "p_value_holm": 0.01,
        "q_value": 0.02,
        "effect_size": 2.5,
        "prob_improvement": 1.0,
        "mde_acc": 0.009,
        "seeds_needed": 3,
        "test_acc_ci_low": 0.8,
    }
    assert {k: bn.data.metrics[k] for k in expected} == pytest.approx(expected)
    assert {k: bn.data.tags[k] for k in ("test", "effect_size_kind", "verdict", "reference")} == {
        "test": "paired_t",
        "effect_size_kind": "d_z",
        "verdict": "significant",
        "reference": "baseline",
    }
    assert "paired_t" in bn.data.tags["mlflow.note.content"] and "significant" in bn.data.tags["mlflow.note.content"]
    base = parents["baseline"]  # empty cells: no metric, no tag (not NaN, not "")
    assert "delta_acc" not in base.data.metrics and "verdict" not in base.data.tags
    assert "q_value_holm" not in bn.data.metrics and "p_value_wilcoxon" not in bn.data.metrics  # absent columns
    # the curves' diagnostics arrive: only the parents are updated, no child is logged again
    io.write_csv(
        tmp_path / "summary" / "diagnostics.csv",
        pd.DataFrame(
            {
                "experiment": ["baseline", "bn/on"],
                "val_loss_min_epoch": [3, 2],
                "last_epoch": [3, 3],
                "overfit_gap": [0.0, 0.05],
                "val_acc_swing": [0.01, 0.02],
                "flags": ["", "overfitting"],
                "reading": ["", "The validation loss is lowest at epoch 2 of 3."],
            }
        ),
    )
    info = track_all(tmp_path, store, exps, make=False)
    assert info["logged"] == {"children": 0, "parents": 2}
    bn = next(r for r in all_runs(store) if r.data.tags["kind"] == "parent" and r.data.tags["experiment"] == "bn/on")
    assert bn.data.metrics["overfit_gap"] == pytest.approx(0.05) and bn.data.metrics["val_loss_min_epoch"] == 2
    assert bn.data.tags["diagnostics.flags"] == "overfitting"
    assert (
        "lowest at epoch 2" in bn.data.tags["diagnostics.reading"]
        and "lowest at epoch 2" in bn.data.tags["mlflow.note.content"]
    )
    assert len(client(store).get_metric_history(bn.info.run_id, "delta_acc")) == 1  # unchanged value: no new point


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
    # one retrained run (same recipe, new results): only it and its parent are logged again
    metrics_json = tmp_path / "runs" / "baseline" / "seed1" / "metrics.json"
    io.write_json(metrics_json, {**io.read_json(metrics_json), "test_acc": 0.9})
    info = track_all(tmp_path, store, exps, make=False)
    assert info["logged"] == {"children": 1, "parents": 1}
    changed = record(tmp_path)[("baseline", "1")]["mlflow_run_id"]
    assert client(store).get_run(changed).data.metrics["test_acc"] == pytest.approx(0.9)
    after = metric_points(store, before)
    others = set(before) - {changed, record(tmp_path)[("baseline", "")]["mlflow_run_id"]}
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


def test_missing_run_file_names_it(tmp_path, fresh_store):
    run = make_run(tmp_path / "runs" / "baseline" / "seed0", complete(), 0)
    (run / "confusion.csv").unlink()
    with pytest.raises(tracking.TrackingError, match="confusion.csv"):
        track_all(tmp_path, fresh_store, {"baseline": complete()}, seeds=(0,), make=False)
    assert not Path(fresh_store["uri"].removeprefix("sqlite:///")).exists()  # failed before touching MLflow
    with pytest.raises(tracking.TrackingError, match="'other' is not in the study table"):
        tracking.track_study(
            [make_run(tmp_path / "runs" / "other" / "seed0", complete(), 0)],
            study_table=write_table(tmp_path, {"baseline": complete()}, [0]),
            runs_root=tmp_path / "runs",
            study="unit",
            out=tmp_path / "o.json",
            record=tmp_path / "r.csv",
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

    with tracking.live_run(spec, recipe=recipe, seed=seed) as on_epoch:
        for row in pd.read_csv(run_dir / "history.csv").to_dict("records"):
            on_epoch(row)
    return exp_id, seed


def test_eight_parallel_live_loggers_on_fresh_store_then_one_writer(tmp_path, fresh_store):
    store = fresh_store
    exps = {"baseline": complete({"epochs": 2}), "bn/on": complete({"epochs": 2, "model": {"batch_norm": True}})}
    jobs = []
    for s in range(4):
        for e, r in exps.items():
            spec = tracking.live_spec(
                uri=store["uri"],
                mlflow_experiment=store["mlflow_experiment"],
                experiment=e,
                group=e.split("/")[0],
                live=True,
                **IDENT,
            )
            jobs.append((make_run(tmp_path / "runs" / e / f"seed{s}", r, s, epochs=2), e, r, s, spec))
    assert not Path(store["uri"].removeprefix("sqlite:///")).exists()  # no init: jobs race to create it
    tracking.Tracker("sqlite:///" + str(tmp_path / "warm.db"), "warm").client  # noqa: B018 (imports once, before fork)
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
    spec = tracking.live_spec(
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
    with tracking.live_run(spec, recipe=recipe, seed=0) as on_epoch:
        for row in rows[:2]:
            on_epoch(row)
        (kid,) = [r for r in all_runs(store) if r.data.tags["kind"] == "child"]
        assert kid.info.status == "RUNNING" and kid.data.metrics["val_acc"] == pytest.approx(0.6)
        time.sleep(1.0)
    with tracking.live_run(spec, recipe=recipe, seed=0) as on_epoch:  # resumed job: epoch 2 again, then 3
        for row in rows[1:]:
            on_epoch(row)
    track_all(tmp_path, store, {"baseline": recipe}, seeds=(0,), make=False)
    runs = all_runs(store)
    kids = [r for r in runs if r.data.tags["kind"] == "child"]
    assert len(kids) == 1 and len(runs) == 2 and kids[0].info.status == "FINISHED"
    c = client(store)
    assert sorted(m.step for m in c.get_metric_history(kids[0].info.run_id, "val_acc")) == [1, 2, 3]
    assert any(k.startswith("system/cpu_utilization") for k in kids[0].data.metrics)
    off = tracking.LiveSpec(
        uri=store["uri"],
        mlflow_experiment=store["mlflow_experiment"],
        experiment="baseline",
        group="baseline",
        live=False,
        **IDENT,
    )
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


def _track_job(uri: str, tmp_path: Path) -> list[str]:
    """`track study` arguments that write to ``uri`` (the job's own server check comes first)."""
    return ["study", "--uri", uri, "--mlflow-experiment", "x", "--study", "s", "--study-table"] + [
        str(tmp_path / "t.json"),
        "--runs",
        str(tmp_path),
        "--run",
        str(tmp_path / "r"),
        "--out",
        str(tmp_path / "i.json"),
        "--record",
        str(tmp_path / "m.csv"),
    ]


def test_unreachable_server_is_one_line_naming_the_uri_within_seconds(tmp_path, monkeypatch, capsys):
    uri = _refused_uri()
    problem = tracking.server_problem(uri)
    assert problem.startswith(f"tracking.uri: MLflow server {uri} is not reachable (") and "\n" not in problem
    assert tracking.server_problem("sqlite:///results/mlflow.db") is None  # local stores need no server
    assert tracking.server_problem(f"http://user:secret@{uri.removeprefix('http://')}").count("secret") == 0

    for key in tracking.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    # the job's own check: one error line, exit 2
    assert tracking.cli(_track_job(uri, tmp_path)) == 2
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    start = time.monotonic()  # MLflow's own client, with the bounded retries (MLflow's default: about 4 minutes)
    with pytest.raises(Exception, match="Max retries exceeded"):
        tracking.init(tracking.Tracker(uri, "x", lock=tmp_path / "lock"))
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
        problem = tracking.server_problem(uri)
        assert tracking.cli(_track_job(uri, tmp_path)) == 2
    assert problem == (
        f"tracking.uri: {uri} is not an MLflow tracking server (HTTP 501 from {uri}/api/2.0/mlflow/experiments/"
        "search); point tracking.uri at one (mlflow server ...), or use a local store (sqlite:///results/mlflow.db "
        "needs no server), then run the same command again"
    )
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    assert not (tmp_path / "i.json").exists()
    with _serving(_NotMlflow) as uri:  # 200, but HTML
        assert f"is not an MLflow tracking server (no MLflow answer from {uri}/api/2.0/" in tracking.server_problem(uri)
    with _serving(type("Denied", (_NotMlflow,), {"status": 401})) as uri:
        assert tracking.server_problem(uri).startswith(
            f"tracking.uri: MLflow server {uri} refused the request (HTTP 401"
        )


# MLflow's undocumented class that LiveRun drives (tracking.py says why), checked at this version
MLFLOW_CHECKED = "3.17.2"


def test_system_metrics_monitor_is_what_live_logging_calls():
    import inspect
    import re

    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    pin = re.search(r'"mlflow==([^"]+)"', (Path(__file__).parents[1] / "pyproject.toml").read_text())[1]
    assert pin == mlflow.__version__ == MLFLOW_CHECKED, (
        f"mlflow {pin} pinned, {mlflow.__version__} installed: tracking.LiveRun uses the undocumented "
        "SystemMetricsMonitor(run_id, sampling_interval=, resume_logging=, tracking_uri=).start()/.finish(); "
        "check it in the new version, then set MLFLOW_CHECKED"
    )
    params = inspect.signature(SystemMetricsMonitor).parameters
    assert {"run_id", "sampling_interval", "resume_logging", "tracking_uri"} <= params.keys()
    assert callable(SystemMetricsMonitor.start) and callable(SystemMetricsMonitor.finish)
