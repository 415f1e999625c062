"""Fault drills: the real Snakemake workflow (smoke preset) through faults, in temporary copies of the repo.

One complete run of the smoke study plus a diverging experiment is shared (module fixture,
never modified); each drill works on its own copy of it:

1. a diverging recipe: ``diverged`` in train.json/metrics.json, the summary, MLflow and the
   report, and the rest of the study completes;
2. a failing job (weights file of garbage bytes) under ``--keep-going``: the rest is produced,
   nothing finished is lost or re-run, the error names the file and the experiment;
3. a corrupted prepared-data cache: detected (message naming the file), rebuilt, never used;
4. a full disk (``RLIMIT_FSIZE``: writes past N bytes fail with EFBIG; or a full tmpfs, a real
   ENOSPC, log included): a clear error naming the file on Snakemake's stderr, no partial output
   at a declared path, no truncated checkpoint, the last good report kept, and the next run
   completes;
5. SIGKILL of the whole Snakemake process tree mid-training (the same command stops at the
   stale lock, ``--unlock``), or SIGTERM to its process group: the same command resumes from the
   checkpoint and ends bit-identical to an uninterrupted run; a second Snakemake started in the
   folder meanwhile is refused (its lock);
6. a read-only results folder: one error line naming it before any job, nothing changed;
7. hostile text (braces, LaTeX, quotes, newlines, HTML, non-ASCII) in every free-text key of
   the shared study: every command works and the HTML/PDF reports show it escaped.

Killed-subprocess resume (test_train), SLURM (test_slurm), bad configs (test_study,
test_pipeline) and tracking concurrency (test_tracking*) are tested elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import psutil
import pypdf
import pytest
import torch
import yaml
from helpers import BIN, HOSTILE, copy_tree, copy_workflow, hostile_text, kill_tree, plan, snakemake, venv_env

pytestmark = pytest.mark.slow

OVERLAY = "faults.yaml"  # presets/smoke.yaml + the diverging group: the study of every drill
DIVERGED = "diverge/unstable"
MLFLOW_RECORD = "results/summary/mlflow.csv"  # the track job's output
BN = "batch_norm/bn"


def _study_overlay(work: Path, name: str, change) -> str:
    """A --configfile overlay: the drills' study (faults.yaml) changed by ``change``, written to ``name``."""
    cfg = yaml.safe_load((work / OVERLAY).read_text())
    change(cfg)
    (work / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def _config(overlay: str) -> list[str]:
    return ["--configfile", "presets/smoke.yaml", overlay]


def _smk(work: Path, overlay: str, *args: str, targets=()) -> subprocess.CompletedProcess:
    """helpers.snakemake with the overlay after presets/smoke.yaml; ``--`` ends --configfile's list."""
    return snakemake(work, overlay, *args, *(["--", *targets] if targets else []))


def _group(cfg: dict, gid: str) -> dict:
    return next(g for g in cfg["ablations"] if g["id"] == gid)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_files(work: Path, exp: str) -> Path:
    return work / "results" / "runs" / exp / "seed0"


def _limit_file_size(limit: int):
    """preexec_fn: every write past ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _snakemake_limited(work: Path, limit: int, overlay: str, *args: str, targets=()) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "--cores", "2", *_config(overlay), *args, "--", *targets]
    return subprocess.run(
        cmd, cwd=work, env=venv_env(), capture_output=True, text=True, timeout=900, preexec_fn=_limit_file_size(limit)
    )


def _ablationlab(work: Path, *args: str) -> None:
    """``python -m ablationlab ARGS`` in ``work`` with its own library, which must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "ablationlab", *args],
        cwd=work,
        env=venv_env() | {"PYTHONPATH": str(work / "src")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _names_file(log: str, name: str) -> bool:
    """Whether an error line of ``log`` says EFBIG ("File too large") and names the file ``name``."""
    return any("File too large" in line and name in line for line in log.splitlines())


def _history(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["seconds", "images_per_s"])  # timings vary between runs


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A complete smoke run with a diverging experiment (read-only: drills work on copies)."""
    work = copy_workflow(tmp_path_factory.mktemp("faults") / "study")
    cfg = yaml.safe_load((work / "presets" / "smoke.yaml").read_text())
    cfg["ablations"].append(
        {
            "id": "diverge",
            "title": "Far too high a learning rate",
            "variants": {"unstable": {"optimizer": {"lr": 1.0e4}}},
        }
    )
    hostile_text(cfg)  # braces, LaTeX, quotes, newlines... in every free-text key: see test_hostile_text_...
    (work / OVERLAY).write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _smk(work, OVERLAY)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]  # the diverging run does not stop the study
    return work


@pytest.fixture
def work(study, tmp_path) -> Path:
    """A private copy of the completed study (mtimes kept, so Snakemake sees it complete)."""
    return copy_tree(study, tmp_path / "study")


# --------------------------------------------------------------------------- 1. diverging recipe


def test_diverging_recipe_is_marked_everywhere_and_the_study_completes(study):
    import mlflow

    table = json.loads((study / "results/study/experiments.json").read_text())
    ids = [e["id"] for e in table["experiments"]]
    assert DIVERGED in ids and len(ids) == 4
    for exp in ids:
        run = _run_files(study, exp)
        train, metrics = (json.loads((run / f).read_text()) for f in ("train.json", "metrics.json"))
        expected = "diverged" if exp == DIVERGED else "finished"
        assert train["status"] == metrics["status"] == expected, exp
    train = json.loads((_run_files(study, DIVERGED) / "train.json").read_text())
    assert train["stop_reason"] == "non_finite_loss" and "non-finite" in train["message"]

    runs = pd.read_csv(study / "results/summary/runs.csv").set_index("experiment")
    experiments = pd.read_csv(study / "results/summary/experiments.csv").set_index("experiment")
    assert list(experiments.index) == ids
    assert runs.loc[DIVERGED, "status"] == experiments.loc[DIVERGED, "status"] == "diverged"
    assert experiments.loc[DIVERGED, "n_diverged"] == 1
    assert set(experiments.drop(index=DIVERGED)["status"]) == {"finished"}

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study / 'results/mlflow.db'}")
    tracked = pd.read_csv(study / "results/summary/mlflow.csv", dtype=str, keep_default_na=False)
    run_id = {(r["experiment"], r["seed"]): r["mlflow_run_id"] for r in tracked.to_dict("records")}
    for exp in ids:
        child, parent = client.get_run(run_id[(exp, "0")]), client.get_run(run_id[(exp, "")])
        expected = "diverged" if exp == DIVERGED else "finished"
        assert child.data.tags["status"] == parent.data.tags["status"] == expected, exp
        assert child.data.tags["experiment"] == exp

    html = (study / "reports/report.html").read_text()
    rows = [r for r in re.findall(r"<tr\b[^>]*>.*?</tr>", html, flags=re.S) if f">{DIVERGED}<" in r]
    assert rows, f"{DIVERGED} is missing from the report's tables"
    for row in rows:  # every table flags the row and shows the status
        assert re.match(r'<tr class="[^"]*\bdiverged\b', row) and re.search(r">\s*diverged\s*<", row), row
    assert any('<span class="status bad">diverged</span>' in row for row in rows)
    assert re.search(rf"Diverged runs.*?{re.escape(DIVERGED)} seed 0", html, flags=re.S)
    for exp in set(ids) - {DIVERGED}:  # the finished ones are not flagged (ranking table: rank, experiment, ...)
        ranked = re.findall(
            rf"<tr\b[^>]*>\s*<td>\d+</td><td class=\"text\">{re.escape(exp)}</td>.*?</tr>", html, flags=re.S
        )
        assert len(ranked) == 1 and "diverged" not in ranked[0], ranked
        assert '<span class="status ok">finished</span>' in ranked[0]


# --------------------------------------------------------------------------- user text


def test_hostile_text_in_every_free_text_key_is_rendered_escaped(study, tmp_path):
    """The drills' study has HOSTILE text in every free-text key (helpers.hostile_text)."""
    import mlflow
    from markupsafe import escape

    report = json.loads((study / "results/study/report.json").read_text())
    assert report["title"] == f"report.title {HOSTILE}" and report["author"] == f"study.author {HOSTILE}"
    assert [g["notes"] for g in report["groups"]] == [
        f"{g}.notes {HOSTILE}" for g in ("batch_norm", "dropout", "diverge")
    ]
    html = (study / "reports/report.html").read_text(encoding="utf-8")
    assert f"<title>{escape(f'report.title {HOSTILE}')}</title>" in html
    for text in (f"study.author {HOSTILE}", f"batch_norm.title {HOSTILE}", f"dropout.title {HOSTILE}"):
        assert str(escape(text)) in html, text
    assert "<b>é中</b>" not in html  # user text is never markup
    notes = re.search(r'<div class="notes">(.*?)</div>', html, flags=re.DOTALL)[1]  # Markdown, escaped
    assert "batch_norm.notes x {word} {experiment} {seed} $\\frac{1}{2}$" in notes and "&lt;b&gt;é中&lt;/b&gt;" in notes
    pdf = pypdf.PdfReader(study / "reports/report.pdf")
    # compared without whitespace: lines wrap anywhere; two-byte fonts extract with NULs
    text = "".join("".join(page.extract_text() for page in pdf.pages).replace("\x00", "").split())
    for key in ("report.title", "study.author", "batch_norm.title", "batch_norm.notes"):
        assert f"{key}x{{word}}{{experiment}}{{seed}}$\\frac{{1}}{{2}}$\"dq\"'sq'\\back$HOME" in text, key
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study / 'results/mlflow.db'}")
    assert client.get_experiment_by_name(f"tracking.experiment {HOSTILE}") is not None
    # Snakemake's own report: its figure categories are the group titles, or the ids of titles with braces
    proc = _smk(study, OVERLAY, "--report", str(tmp_path / "report.zip"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert any(name.endswith("batch_norm_curves.png") for name in zipfile.ZipFile(tmp_path / "report.zip").namelist())


# --------------------------------------------------------------------------- 2. failing job


def test_failing_job_keeps_going_and_loses_nothing(work):
    (work / "garbage.pt").write_bytes(os.urandom(4096))  # exists (passes the config check), not a state_dict

    def change(cfg):
        cfg["ablations"].append(
            {
                "id": "transfer",
                "title": "Transfer",
                "variants": {"bad": {"model": {"name": "resnet18", "weights": "garbage.pt"}}},
            }
        )
        _group(cfg, "dropout")["sweep"]["values"] = [0.5, 0.25]  # a new experiment that must still be produced

    overlay = _study_overlay(work, "failing.yaml", change)
    before = _snapshot(work / "results/runs")
    proc = _smk(work, overlay, "--keep-going")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]

    # the error names the experiment and the file, in Snakemake's report and in the job's log
    assert "Error in rule train_transfer" in out and "experiment=transfer/bad" in out, out[-4000:]
    log = (work / "results/logs/train/transfer/bad/seed0.log").read_text()
    assert "model.weights: garbage.pt is not a plain state_dict" in log, log
    assert "model.weights: garbage.pt is not a plain state_dict" in out
    assert not (_run_files(work, "transfer/bad")).exists() or not any(_run_files(work, "transfer/bad").iterdir())

    # --keep-going finished the rest: the new experiment is complete (the study's MLflow writer runs
    # after the summary, which needs every run: it waits for the failed one)
    new = _run_files(work, "dropout/p=0.25")
    assert json.loads((new / "train.json").read_text())["status"] == "finished"
    assert json.loads((new / "recipe.json").read_text())["model"]["dropout"] == 0.25
    assert 0 <= json.loads((new / "metrics.json").read_text())["test_acc"] <= 1
    assert not re.search(r"^(local)?rule (summarize|track):$", out, flags=re.M)

    # already finished results: untouched (content and mtime)
    after = _snapshot(work / "results/runs")
    assert {k: v for k, v in after.items() if k in before} == before

    # re-running retries only the failed job; nothing finished is re-run or lost
    produced = _snapshot(work / "results/runs")
    proc = _smk(work, overlay, "--keep-going")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "experiment=transfer/bad" in out
    started = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", out, flags=re.M)
    assert started == ["train_transfer"], out[-4000:]
    assert _snapshot(work / "results/runs") == produced


# --------------------------------------------------------------------------- 3. corrupted data cache


def test_corrupted_data_cache_is_detected_and_rebuilt(work):
    (data_dir,) = (work / "results/data").glob("digits-*")  # named after its options and code (layout.data_key)
    original = (data_dir / "train_x.pt").read_bytes()
    corrupt = bytearray(original)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 16] = bytes(b ^ 0xFF for b in corrupt[middle : middle + 16])  # same size, other pixels
    (data_dir / "train_x.pt").write_bytes(bytes(corrupt))
    baseline_before = _snapshot(_run_files(work, "baseline"))

    overlay = _study_overlay(
        work, "lr.yaml", lambda c: _group(c, "batch_norm")["variants"]["bn"].update(optimizer={"lr": 0.02})
    )  # forces the batch_norm/bn train job
    train_log = work / "results/logs/train" / BN / "seed0.log"
    found = rf"{data_dir.relative_to(work)}/train_x\.pt is corrupted \(sha256 mismatch\)"

    # a dry run plans the rebuild and changes nothing (parsing never writes)
    before = _snapshot(data_dir)
    proc = _smk(work, overlay, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and re.search(r"^checkpoint prepare_data:$", out, re.M), out[-3000:]
    rebuild = rf"reason: Missing output files: {data_dir.relative_to(work)}/rebuild-\w+$"
    assert re.search(rebuild, out, re.M), out[-3000:]
    assert not re.search(found, out)  # parsing prints nothing; a run says it before its first job
    assert _snapshot(data_dir) == before

    # the run rebuilds it first; the rebuilt files stay ancient inputs, so identical data re-runs
    # nothing but the changed experiment (the group target asks for the cache's `verified` marker)
    proc = _smk(work, overlay, targets=["batch_norm"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(found + r".*: prepare_data rebuilds it", proc.stderr), proc.stderr[-5000:]
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", out, re.M))
    assert ran == {"prepare_data", "train_batch_norm", "batch_norm"}, ran

    # rebuilt: the bytes it held before the corruption, matching meta.json; training used verified data
    assert (data_dir / "train_x.pt").read_bytes() == original
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["sha256"]["train_x.pt"] == hashlib.sha256(original).hexdigest()
    assert "corrupted" not in train_log.read_text()
    run = _run_files(work, BN)
    assert json.loads((run / "recipe.json").read_text())["optimizer"]["lr"] == 0.02
    assert json.loads((run / "train.json").read_text())["status"] == "finished"
    assert _snapshot(_run_files(work, "baseline")) == baseline_before  # not a target: untouched
    proc = _smk(work, overlay, "-n", targets=["batch_norm"])  # healthy again: nothing to rebuild once more
    assert proc.returncode == 0 and "prepare_data" not in proc.stdout + proc.stderr, proc.stdout[-3000:]


# --------------------------------------------------------------------------- 4. disk full


def test_disk_full_while_writing_the_report_keeps_the_last_good_report(work):
    last = {name: (work / "reports" / name).read_bytes() for name in ("report.html", "report.pdf")}
    size = len(last["report.html"])
    runs_before = _snapshot(work / "results/runs")
    proc = _snakemake_limited(work, size // 2, OVERLAY, "--forcerun", "render_report")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    log = (work / "results/logs/report/report.log").read_text()
    assert _names_file(log, "report.html") and _names_file(out, "results/report/report.html"), log  # one line

    # the last good report is still published; the failed render left nothing, no temporary either
    assert {name: (work / "reports" / name).read_bytes() for name in last} == last
    assert not (work / "results/report").exists() or not any((work / "results/report").iterdir())
    jobs = plan(work, *_config(OVERLAY))
    assert {"render_report", "publish_report"} <= {r for r, _, _ in jobs} and not any(
        r.startswith("train_") for r, _, _ in jobs
    )
    assert _snapshot(work / "results/runs") == runs_before

    proc = _smk(work, OVERLAY)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (work / "reports/report.html").read_text().rstrip().endswith("</html>")
    assert (work / "reports/report.pdf").read_bytes().startswith(b"%PDF")


def _tmpfs_works() -> bool:
    """Whether this process may mount a tmpfs in a mount namespace of its own (root, unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", "/mnt"], check=False)
    return probe.returncode == 0


def _snakemake_on_full_disk(work: Path, full: list[str], overlay: str, *args: str) -> subprocess.CompletedProcess:
    """Snakemake with each folder of ``full`` (under ``work``) on a tmpfs of its own with no space left:
    a real ENOSPC for every write there, the job's log included. The mounts live in a mount namespace
    of Snakemake's own (``unshare -m``), so they vanish with it and hide nothing from the test."""
    if not _tmpfs_works():
        pytest.skip("a full disk needs a tmpfs mount: root and unshare")
    fill = "".join(
        f"mkdir -p {q} && mount -t tmpfs -o size=64k tmpfs {q} && (head -c 1M /dev/zero > {q}/.fill 2>/dev/null; :) && "
        for q in map(shlex.quote, full)
    )
    cmd = shlex.join([str(BIN / "snakemake"), "--cores", "2", *_config(overlay), *args])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", fill + "exec " + cmd],
        cwd=work,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _one_line_naming(out: str, path: str) -> bool:
    """Whether ``out`` has the one error line of a full disk naming ``path``, and no traceback."""
    return f"error: [Errno 28] No space left on device: '{path}" in out and "Traceback" not in out


def test_disk_full_in_figures_and_track_is_one_line_naming_the_file(work):
    """Also when the job's own log cannot be written: the line reaches Snakemake's stderr."""
    report = (work / "reports/report.html").read_bytes()
    proc = _snakemake_on_full_disk(work, ["results/figures", "results/logs/figures"], OVERLAY, "--forcerun", "figures")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and _one_line_naming(out, "results/figures/"), out[-4000:]
    assert (work / "reports/report.html").read_bytes() == report  # the last good report stays

    # a new MLflow store on a full disk: track names the database file, not SQLAlchemy's traceback
    store = _study_overlay(work, "store.yaml", lambda c: c.update(tracking={"uri": "sqlite:///store/mlflow.db"}))
    proc = _snakemake_on_full_disk(work, ["store", "results/logs/track"], store, "--", MLFLOW_RECORD)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "rule track:" in out and _one_line_naming(out, "store/mlflow.db'"), out[-4000:]
    assert "sqlalchemy" not in out.lower()


def test_disk_full_while_checkpointing_keeps_the_old_checkpoint_intact(work):
    ckpt = work / "results/checkpoints" / BN / "seed0" / "last.pt"
    old = ckpt.read_bytes()
    # 22k parameters: weights_init.pt (~90 kB) fits under the limit, a checkpoint (weights + momentum
    # buffers, ~200 kB) does not; Snakemake's own files (its copy of the 21 kB config schema, logs) fit
    limit = 140_000
    overlay = _study_overlay(
        work,
        "wide.yaml",
        lambda c: _group(c, "batch_norm")["variants"]["bn"].update(
            model={"batch_norm": True, "widths": [128]}, optimizer={"name": "momentum", "lr": 0.03}
        ),
    )
    target = f"results/runs/{BN}/seed0/train.json"
    proc = _snakemake_limited(work, limit, overlay, targets=[target])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    log = (work / "results/logs/train" / BN / "seed0.log").read_text()
    assert _names_file(log, "last.pt"), log

    assert ckpt.read_bytes() == old  # the previous checkpoint is intact, not truncated
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt", "weights_init.pt"]  # no temporary
    torch.load(ckpt, weights_only=True)
    run = _run_files(work, BN)
    assert not any((run / name).exists() for name in ("train.json", "weights.pt", "history.csv"))

    proc = _smk(work, overlay, targets=[target])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((run / "train.json").read_text())["status"] == "finished"
    assert json.loads((run / "recipe.json").read_text())["optimizer"]["lr"] == 0.03
    assert len(torch.load(ckpt, weights_only=True)["model"]["conv1.weight"]) == 128


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` (or a file) made unwritable: chattr +i as root (root ignores chmod), chmod otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("no way to make a folder read-only for root here (chattr +i unsupported)")
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_read_only_results_folder_is_one_error_line_and_nothing_is_lost(work):
    before = _snapshot(work / "results")
    target = ["results/summary/runs.csv"]
    with _read_only(work / "results/summary"):
        proc = _smk(work, OVERLAY, "--forcerun", "summarize", targets=target)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert (
        "[Errno 13] Folder not writable: 'results/summary': make it writable, then run the same command again"
    ) in out and "Traceback" not in out, out[-3000:]
    assert _snapshot(work / "results") == before  # stopped before the first job: nothing touched
    proc = _smk(work, OVERLAY, "--forcerun", "summarize", targets=target)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_unwritable_tracking_store_is_one_line_naming_it_before_any_job(work):
    overlay = _study_overlay(
        work, "variant.yaml", lambda c: _group(c, "batch_norm")["variants"]["bn"].update({"optimizer": {"lr": 0.02}})
    )
    before = _snapshot(work / "results")
    with _read_only(work / "results/mlflow.db"):
        proc = _smk(work, overlay)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert out.rstrip().endswith(
        "tracking.uri: [Errno 13] MLflow store not writable: 'results/mlflow.db': make it writable, then run "
        "the same command again"
    ), out[-3000:]
    assert "Traceback" not in out and 'File "' not in out, out[-3000:]
    assert _snapshot(work / "results") == before  # refused before the first job: no training lost
    assert not list((work / ".snakemake" / "locks").glob("*"))
    proc = _smk(work, overlay)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_a_locked_published_report_is_named_and_the_build_keeps_its_own(work):
    overlay = _study_overlay(work, "title.yaml", lambda c: c["study"].update(title="Locked report drill"))
    published, rendered = work / "reports/report.html", work / "results/report/report.html"
    assert published.stat().st_ino != rendered.stat().st_ino  # a copy: editing one leaves the other alone
    with _read_only(published):
        proc = _smk(work, overlay)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "reports/report.html" in out, out[-3000:]
        assert "results/report/report.html" not in out, out[-3000:]  # a file the user never touched
        assert os.access(rendered, os.W_OK)
    proc = _smk(work, overlay)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Locked report drill" in published.read_text() and published.read_bytes() == rendered.read_bytes()
    assert published.stat().st_ino != rendered.stat().st_ino


# --------------------------------------------------------------------------- 5. killed pipeline


def _terminate(proc: subprocess.Popen) -> list[int]:
    """SIGTERM to Snakemake's process group, as a hang-up, `timeout` or a batch system sends it: the
    training job ends mid-epoch, and Snakemake (which on its own would let running jobs finish) exits."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGCONT)  # jobs frozen by the test take their SIGTERM now
    psutil.wait_procs(tree, timeout=120)
    return [p.pid for p in tree]


# how the running pipeline is stopped, and whether it leaves its lock behind (README: --unlock)
STOPS = {"kill -9 of the whole tree": (kill_tree, True), "SIGTERM": (_terminate, False)}


@pytest.mark.parametrize("how", STOPS)
def test_stopped_pipeline_resumes_from_checkpoint_and_matches_an_uninterrupted_run(work, tmp_path, how):
    stop, leaves_lock = STOPS[how]
    exp, epochs = "batch_norm/long", 12  # frozen right after its first checkpoint: epochs to spare
    overlay = _study_overlay(
        work,
        "long.yaml",
        lambda c: _group(c, "batch_norm")["variants"].update(
            long={"model": {"batch_norm": True, "widths": [16, 32]}, "batch_size": 16, "epochs": epochs}
        ),
    )
    target = f"results/runs/{exp}/seed0/metrics.json"
    ckpt = work / "results/checkpoints" / exp / "seed0" / "last.pt"
    cmd = [str(BIN / "snakemake"), "--cores", "2", *_config(overlay)]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--", target], cwd=work, env=venv_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while not ckpt.exists():  # the first epoch's checkpoint
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint within 600 s"
                time.sleep(0.05)
            for job in psutil.Process(proc.pid).children(recursive=True):  # frozen mid-training meanwhile
                with contextlib.suppress(psutil.NoSuchProcess):
                    job.send_signal(signal.SIGSTOP)
            # a second run in the same folder is refused while the first runs, and changes nothing
            concurrent = _smk(work, overlay, targets=[target])
            assert concurrent.returncode != 0 and "LockException" in concurrent.stdout + concurrent.stderr
            assert proc.poll() is None
            stopped = stop(proc)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(stopped) >= 2  # snakemake and at least the training job
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch < epochs, f"checkpoint at epoch {epoch}: the stop came too late to test resuming"
    run = _run_files(work, exp)
    assert not (run / "train.json").exists()  # no output that looks complete

    if leaves_lock:  # the recovery the README gives: the same command fails naming the lock; --unlock
        locked = _smk(work, overlay, "--rerun-incomplete", targets=[target])
        assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
        assert "It can be removed with the --unlock argument" in locked.stdout + locked.stderr
        unlock = subprocess.run(
            [*cmd, "--unlock"], cwd=work, env=venv_env(), capture_output=True, text=True, timeout=300
        )
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    proc = _smk(work, overlay, "--rerun-incomplete", targets=[target])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    log = (work / "results/logs/train" / exp / "seed0.log").read_text()
    resumed = re.search(r"resuming from epoch (\d+)", log)
    assert resumed and int(resumed[1]) >= epoch, log[-3000:]

    # an uninterrupted run of the same recipe and seed, straight through the CLI
    clean = tmp_path / "clean"
    data = ("--data", str(next((work / "results/data").glob("digits-*"))))
    _ablationlab(
        work,
        "train",
        *data,
        "--recipe",
        str(run / "recipe.json"),
        "--seed",
        "0",
        "--out",
        str(clean),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--device",
        "cpu",
        "--threads",
        "1",
    )
    _ablationlab(work, "evaluate", *data, "--run", str(clean), "--device", "cpu")

    assert len(pd.read_csv(run / "history.csv")) == epochs
    pd.testing.assert_frame_equal(_history(run / "history.csv"), _history(clean / "history.csv"))
    resumed_weights, clean_weights = (torch.load(d / "weights.pt", weights_only=True) for d in (run, clean))
    assert resumed_weights.keys() == clean_weights.keys()
    assert all(torch.equal(resumed_weights[k], clean_weights[k]) for k in clean_weights)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, clean))
    assert {k: got[k] for k in ("test_acc", "test_loss", "per_class_acc", "status")} == {
        k: want[k] for k in ("test_acc", "test_loss", "per_class_acc", "status")
    }
    got, want = (json.loads((d / "train.json").read_text()) for d in (run, clean))
    assert {k: got[k] for k in ("status", "epochs_run", "best_epoch", "best_val_loss", "best_val_acc")} == {
        k: want[k] for k in ("status", "epochs_run", "best_epoch", "best_val_loss", "best_val_acc")
    }
