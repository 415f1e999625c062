"""The tail of a study (what runs after the last train job), timed per stage at 1x, 2x and 4x the
default study's size.

Builds a default-size study's run files without training it: config.yaml (52 experiments x 3 seeds =
156 runs, 13 groups) on the bundled 8x8 ``digits``, its ablation groups repeated ``k`` times for the
``k``x study (group ``dropout``, then ``dropout_x2`` ...). One real train job (config.yaml's baseline
recipe, 3 seeds, ``train --evaluate``) gives every file its real size and shape; each run of the study
is a copy of one of those three runs with its numbers perturbed (test accuracy per experiment and
seed, its history, its stop epoch for early stopping) and its experiment's recipe. ``weights*.pt``
have the shapes of the experiment's own network, except for the transfer group's ImageNet-size
networks (ResNet-18: 45 MB, VGG-11-BN: 531 MB per file; copied into MLflow's artifact store, the
default study's would be 5 GB), which get the baseline's weights unless ``--big-weights``.

Then runs each stage as its rule does (``python -m ablationlab <stage>`` with the rule's arguments,
a fresh process each), into fresh output folders:

- ``summarize`` (runs.csv, experiments.csv, diagnostics.csv)
- ``track`` into a fresh SQLite MLflow store (``mlflow.db``, artifacts beside it)
- ``figures`` (``--figure-jobs``: the figures rule's threads)
- ``report`` (HTML and PDF)
- ``track_again``: ``track`` once more with nothing changed: it must log nothing (checked)

Prints a yardstick (``python -c "import torch"``, the minimum of 3) and one line per stage and size:
seconds and CPU seconds (user + system; the minimum of ``--repeats``: the machine may be shared),
seconds per run, and growth (seconds / seconds at the smallest size, CPU seconds likewise, against the
size's ratio: linear growth has them equal; on a loaded machine compare the CPU seconds)::

    python benchmarks/tail_scaling.py [--sizes 1,2,4] [--repeats 2] [--work DIR] [--profile DIR]

``--profile DIR`` writes each stage's cProfile (``DIR/<stage>-<k>x.prof``) from its last repeat.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
RUN_FILES = (  # what a train --evaluate job writes, besides the weights
    "activations.npz",
    "confusion.csv",
    "misclassified.csv",
    "predictions.csv",
)
WEIGHTS = ("weights_init.pt", "weights.pt", "weights_best.pt")
PROFILE = "import cProfile, sys; from ablationlab.__main__ import main; cProfile.run('main(sys.argv[2:])', sys.argv[1])"
LAST_CPU = [0.0]  # CPU seconds of the last _run
STAGES = ("summarize", "track", "figures", "report", "track_again")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("SOURCE_DATE_EPOCH", "0")
    return env


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], *, profile: Path | None = None, log: Path | None = None) -> float:
    """Wall seconds of ``cmd`` (a ``python -m ...`` command) in a fresh process; raise on failure.
    Its CPU seconds (user + system, its children's too) are added to ``CPU[cmd[3]]``."""
    if profile is not None:  # python -m ablationlab ends without teardown: profile main() instead
        cmd = [cmd[0], "-c", PROFILE, str(profile), *cmd[3:]]
    start, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    LAST_CPU[0] = _cpu() - cpu
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return seconds


def yardstick(repeats: int = 3) -> float:
    """``python -c "import torch"``: the minimum of ``repeats`` fresh processes."""
    return min(_run([sys.executable, "-c", "import torch"]) for _ in range(repeats))


# --------------------------------------------------------------------------- the study's files


def config(scale: int) -> dict:
    """config.yaml on digits, its ablation groups repeated ``scale`` times (bases renamed alike)."""
    from ablationlab.study import read_config

    base = read_config([REPO / "config.yaml"])
    base["data"]["dataset"] = "digits"
    groups = base["ablations"]
    ids = {g["id"] for g in groups}
    out = []
    for k in range(1, scale + 1):
        suffix = "" if k == 1 else f"_x{k}"
        for group in groups:
            g = copy.deepcopy(group)
            g["id"] += suffix
            g["title"] += "" if k == 1 else f" ({k})"
            if "base" in g and g["base"].split("/")[0] in ids:
                head, _, variant = g["base"].partition("/")
                g["base"] = f"{head}{suffix}/{variant}"
            out.append(g)
    base["ablations"] = out
    return base


def source_runs(work: Path) -> tuple[Path, Path]:
    """(prepared digits, one real train job's run folder ``seed{0,1,2}``), made once under ``work``."""
    from ablationlab import prepare, study

    data_dir, runs = work / "source" / "data" / "digits", work / "source" / "runs"
    if not (data_dir / "meta.json").exists():
        prepare.prepare("digits", data_dir, root=work / "source" / "raw", val_size=0.1, split_seed=0)
    if not (work / "source" / "train.log").exists():
        recipe = study.resolve(config(1))["experiments"][0]["recipe"]
        cmd = [sys.executable, "-m", "ablationlab", "train", "--data", str(data_dir), "--recipe", json.dumps(recipe)]
        cmd += ["--seed", *map(str, SEEDS), "--out", str(runs / "seed{seed}")]
        cmd += ["--checkpoint-dir", str(work / "source" / "checkpoints" / "seed{seed}")]
        _run([*cmd, "--device", "cpu", "--threads", "1", "--evaluate"], log=work / "source" / "train.log")
    return data_dir, runs


def _history(source: Path, epochs: int, shift: float, rng: random.Random) -> tuple[str, int, float, float]:
    """The source history.csv stretched to ``epochs`` rows, accuracies shifted by ``shift``, with noise;
    (csv text, best epoch, best val acc, best val loss)."""
    import pandas as pd

    frame = pd.read_csv(source)
    rows = [frame.iloc[min(i, len(frame) - 1)].to_dict() for i in range(epochs)]
    for i, row in enumerate(rows):
        row["epoch"] = i + 1
        for col in ("train_acc", "val_acc"):
            row[col] = min(1.0, max(0.0, row[col] + shift + rng.gauss(0, 0.005)))
        for col in ("train_loss", "val_loss"):
            row[col] = max(1e-4, row[col] * (1 - shift) + rng.gauss(0, 0.01))
        row["seconds"] = row["seconds"] * (1 + rng.gauss(0, 0.05))
    out = pd.DataFrame(rows, columns=frame.columns)
    out["epoch"] = out["epoch"].astype(int)
    best = int(out["val_loss"].idxmin())
    return out.to_csv(index=False), best + 1, float(out["val_acc"][best]), float(out["val_loss"][best])


def _weights(recipe: dict, meta: dict, cache: Path, fallback: Path, big: bool) -> Path:
    """A state_dict file of ``recipe``'s network (one per distinct network), or ``fallback``."""
    import torch

    from ablationlab import io
    from ablationlab.runtime import build_network

    if recipe["model"]["name"] in ("resnet18", "vgg11_bn") and not big:
        return fallback
    key = io.canonical_json({"model": recipe["model"], "resize": recipe["input"]["resize"]})
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if not path.exists():
        torch.manual_seed(0)
        io.save_torch(path, build_network(recipe, meta, pretrained=False).state_dict())
    return path


def build(work: Path, scale: int, *, big_weights: bool = False) -> dict[str, Path]:
    """The ``scale``x study's inputs of the tail under ``work/<scale>x`` (made once)."""
    from ablationlab import io, study
    from ablationlab.layout import job_stem

    root = work / f"{scale}x"
    paths = {
        "root": root,
        "study": root / "study",
        "runs": root / "runs",
        "logs": root / "logs" / "train",
        "benchmarks": root / "benchmarks" / "train",
    }
    data_dir, source = source_runs(work)
    paths["data"] = data_dir
    if (root / "done").exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    loaded = study.load(config(scale))
    io.write_json(paths["study"] / "experiments.json", loaded.experiments)
    io.write_json(paths["study"] / "report.json", loaded.report)
    meta = io.read_json(data_dir / "meta.json")
    cache = work / "weights"
    cache.mkdir(parents=True, exist_ok=True)
    fallback = source / "seed0" / "weights.pt"
    rng = random.Random(scale)
    for n, exp in enumerate(loaded.experiments["experiments"]):
        recipe = exp["recipe"]
        weights = _weights(recipe, meta, cache, fallback, big_weights)
        shift = rng.uniform(-0.05, 0.05) if exp["id"] != "best_model/vgg_bn_aug" else 0.2
        es = recipe["early_stopping"]
        for seed in SEEDS:
            src, out = source / f"seed{seed}", paths["runs"] / exp["id"] / f"seed{seed}"
            out.mkdir(parents=True)
            for name in RUN_FILES:
                shutil.copyfile(src / name, out / name)
            for name in WEIGHTS:
                os.link(weights, out / name)
            epochs = recipe["epochs"]
            if es["enabled"]:
                epochs = min(epochs, rng.randint(12, 30))
            text, best_epoch, best_acc, best_loss = _history(src / "history.csv", epochs, shift, rng)
            (out / "history.csv").write_text(text)
            io.write_json(out / "recipe.json", recipe)
            train = io.read_json(src / "train.json")
            train.update(
                seed=seed,
                epochs_run=epochs,
                best_epoch=best_epoch,
                best_val_acc=best_acc,
                best_val_loss=best_loss,
                stop_reason="early_stopping" if epochs < recipe["epochs"] else "epochs",
                wall_seconds=train["wall_seconds"] * epochs / 10 * (1 + rng.gauss(0, 0.05)),
                weights="best" if es["enabled"] and es["restore_best"] else "last",
            )
            io.write_json(out / "train.json", train)
            metrics = io.read_json(src / "metrics.json")
            acc = min(1.0, max(0.0, metrics["test_acc"] + shift + rng.gauss(0, 0.01)))
            metrics.update(test_acc=acc, test_acc_best=acc, test_loss=metrics["test_loss"] * (1 - shift))
            io.write_json(out / "metrics.json", metrics)
        stem = job_stem(SEEDS)
        io.write_text(paths["logs"] / exp["id"] / f"{stem}.log", (source.parent / "train.log").read_text())
        io.write_text(
            paths["benchmarks"] / exp["id"] / f"{stem}.tsv",
            "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
            f"{14 + n % 5}.2\t0:00:14\t610.1\t3000.2\t590.0\t600.3\t0.1\t2.3\t95.0\t13.1\n",
        )
    (root / "done").touch()
    return paths


# --------------------------------------------------------------------------- the stages


def commands(paths: dict[str, Path], out: Path, figure_jobs: int) -> dict[str, list[str]]:
    """Each stage's command as its rule runs it, writing under ``out``."""
    py = [sys.executable, "-m", "ablationlab"]
    table, summary, figures = paths["study"] / "experiments.json", out / "summary", out / "figures"
    run_dirs = [str(paths["runs"] / e / f"seed{s}") for e in _experiments(table) for s in SEEDS]
    track = [*py, "track", "study", "--study-table", str(table), "--runs", str(paths["runs"]), "--run", *run_dirs]
    track += ["--summary", str(summary), "--logs", str(paths["logs"]), "--study", "cnn-ablation"]
    track += ["--out", str(out / "mlflow.json"), "--record", str(summary / "mlflow.csv")]
    track += ["--uri", f"sqlite:///{out / 'mlflow.db'}", "--mlflow-experiment", "cnn-ablation"]
    return {
        "summarize": [*py, "summarize", "--study", str(table), "--runs", str(paths["runs"]), "--out", str(summary)],
        "track": track,
        "figures": [
            *py,
            "figures",
            "--study",
            str(table),
            "--summary",
            str(summary),
            "--data",
            str(paths["data"]),
            "--runs",
            str(paths["runs"]),
            "--out",
            str(figures),
            *(["--jobs", str(figure_jobs)] if figure_jobs else []),
        ],
        "report": [
            *py,
            "report",
            "--study-report",
            str(paths["study"] / "report.json"),
            "--study",
            str(table),
            "--summary",
            str(summary),
            "--figures",
            str(figures),
            "--data",
            str(paths["data"]),
            "--benchmarks",
            str(paths["benchmarks"]),
            "--out-html",
            str(out / "report.html"),
            "--out-pdf",
            str(out / "report.pdf"),
        ],
        "track_again": track,
    }


def _experiments(table: Path) -> list[str]:
    return [e["id"] for e in json.loads(table.read_text())["experiments"]]


def tail(
    paths: dict[str, Path], out: Path, figure_jobs: int, profile: Path | None, tag: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Run the tail's stages into the fresh folder ``out``: ({stage: wall seconds}, {stage: CPU seconds})."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds, cpu = {}, {}
    for stage, cmd in commands(paths, out, figure_jobs).items():
        prof = profile / f"{stage}-{tag}.prof" if profile else None
        seconds[stage] = _run(cmd, profile=prof, log=out / f"{stage}.log")
        cpu[stage] = LAST_CPU[0]
        if stage.startswith("track"):
            logged = json.loads((out / "mlflow.json").read_text())["logged"]
            if stage == "track_again" and any(logged.values()):
                raise SystemExit(f"track with nothing changed logged {logged}")
    return seconds, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4", help="study sizes, multiples of the default study (default 1,2,4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each size; the minimum is shown (default 1)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the study files (kept; default: temporary)")
    parser.add_argument("--profile", type=Path, default=None, help="write each stage's cProfile into this folder")
    parser.add_argument(
        "--figure-jobs",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="figures --jobs (default: the figures rule's threads under --cores all, cores - 1; 0: leave it out)",
    )
    parser.add_argument("--big-weights", action="store_true", help="the transfer group's real ImageNet-size weights")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="tail-"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(f"yardstick: python -c 'import torch' {yardstick():.2f} s (min of 3); cores {os.cpu_count()}")
    results: dict[int, dict[str, float]] = {}
    cpu_results: dict[int, dict[str, float]] = {}
    for k in sizes:
        paths = build(work, k, big_weights=args.big_weights)
        best: dict[str, float] = {}
        best_cpu: dict[str, float] = {}
        for _ in range(args.repeats):
            got, cpu = tail(paths, work / f"out-{k}x", args.figure_jobs, args.profile, f"{k}x")
            best = {s: min(best.get(s, math.inf), got[s]) for s in got}
            best_cpu = {s: min(best_cpu.get(s, math.inf), cpu[s]) for s in cpu}
        best["total"], best_cpu["total"] = sum(best.values()), sum(best_cpu.values())
        results[k], cpu_results[k] = best, best_cpu
        n_runs = len(_experiments(paths["study"] / "experiments.json")) * len(SEEDS)
        for stage in (*STAGES, "total"):
            secs = best[stage]
            print(
                f"stage={stage:<11} size={k}x runs={n_runs:<4} seconds={secs:7.2f} cpu_s={best_cpu[stage]:7.2f} "
                f"per_run={secs / n_runs:.3f} growth={secs / results[sizes[0]][stage]:5.2f} "
                f"cpu_growth={best_cpu[stage] / cpu_results[sizes[0]][stage]:5.2f} (size x{k / sizes[0]:g})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
