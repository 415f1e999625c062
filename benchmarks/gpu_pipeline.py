"""The default study through the real pipeline on one GPU: ``snakemake`` end to end, timed per group.

``study`` mode: unpacks the image folder (default: the real CIFAR-10 of
``../shared/data/cifar10-jpeg.tgz``; ``--images N`` keeps the first N images of each split), writes
an overlay of ``config.yaml`` (``data.dataset: imagefolder`` on it, every transfer variant with
``weights: none``: ImageNet weights cannot be downloaded there, and cost the same to train) and runs
``snakemake`` on both in ``--work``, every experiment, the call ``--limit-s`` seconds at most (unpacking included). A
call cut short leaves its finished jobs: the next call with the same ``--work`` goes on from there
(the figures add up over calls). A background ``nvidia-smi`` samples the GPU's utilisation; the
table gives per group the runs trained, the wall span of its train jobs (first start to last end),
their summed job seconds and the GPU busy share while they ran (``n/a`` without ``nvidia-smi``),
then the whole study::

    group             runs  span_s   job_s  gpu_busy
    ...
    study_wall_s=<s> runs=<n> of <m> gpu_busy=<share> finished=<yes|no> report=<included|left out>

Where WeasyPrint cannot load (``import weasyprint`` fails: the package, or its system library pango,
is missing, as on a bare GPU image) or with ``--no-report``, every target but the report's runs
(``--omit-from render_report``: train, summarize, track, figures), and the output says so and why.

``sharing`` mode: the same overlay, the train jobs of the first ``--groups N`` non-transfer groups
only (their group targets: no tail), at ``--jobs`` train jobs per GPU (gpu_slot.py's
``jobs_per_gpu``, ``--resources gpu=J``), once plain (time-sharing: the jobs' kernels take turns)
and once under NVIDIA MPS (``nvidia-cuda-mps-control -d``: kernels of several processes run at
once); ``--limit-s`` bounds each setting (two per ``--jobs`` value); one line per setting::

    sharing jobs_per_gpu=4 mps=on wall_s=<s> runs=<n> gpu_busy=<share>

    python benchmarks/gpu_pipeline.py study [--limit-s 280] [--data TGZ_OR_FOLDER] [--images N]
        [--epochs E] [--seeds 0 1 2] [--cores 16] [--threads 2] [--jobs-per-gpu 4] [--work DIR] [--no-report]
    python benchmarks/gpu_pipeline.py sharing [--jobs 4] [--groups 6] [--limit-s 100] ...

On a CPU (``--device cpu``, tiny ``--images`` and ``--epochs 1``) it runs the same steps; the busy
column is then ``n/a``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from train_jobs import CIFAR_TGZ, REPO, image_folder

GPU = "nvidia-smi"


def subset(folder: Path, images: int | None, work: Path) -> Path:
    """``folder``, or a copy of its first ``images`` images of each split (spread over the classes)."""
    if images is None:
        return folder
    out = work / f"images-{images}"
    if out.is_dir():
        return out
    for split in ("train", "test"):
        classes = sorted(p for p in (folder / split).iterdir() if p.is_dir())
        files = {c: sorted(c.iterdir()) for c in classes}
        for i in range(images):
            c = classes[i % len(classes)]
            if i // len(classes) < len(files[c]):
                src = files[c][i // len(classes)]
                (out / split / c.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out / split / c.name / src.name)
    return out


def overlay(config: dict, root: Path, args: argparse.Namespace, only: list[str] | None = None) -> dict:
    """The config's overlay: the image folder, device and threads, transfer without downloads; with
    ``only``, the non-transfer groups' experiments among ``only`` (sharing mode)."""
    ablations = []
    for group in config["ablations"]:
        group = yaml.safe_load(yaml.safe_dump(group))
        for variant in (group.get("variants") or {}).values():
            if "weights" in (variant.get("model") or {}) and variant["model"]["weights"] != "none":
                variant["model"]["weights"] = "none"
            if args.epochs is not None:
                variant["epochs"] = args.epochs
        if only is not None and (group["id"] == "transfer" or group["id"] not in only):
            continue
        ablations.append(group)
    over = {
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": None},
        "device": args.device,
        "threads": args.threads,
        "ablations": ablations,
        "tracking": {"uri": "sqlite:///results/mlflow.db"},
    }
    if args.seeds is not None:
        over["seeds"] = args.seeds
    if args.epochs is not None:
        over["baseline"] = {"epochs": args.epochs}
    return over


def gpu_resources(jobs_per_gpu: int, device: str) -> dict:
    """resources: every group ``jobs_per_gpu`` jobs a GPU, transfer a GPU of its own (on CUDA)."""
    gpu = 1 if device != "cpu" else 0
    return {"default": {"gpu": gpu, "jobs_per_gpu": jobs_per_gpu}, "transfer": {"gpu": gpu, "jobs_per_gpu": 1}}


@contextlib.contextmanager
def sampling(path: Path) -> Iterator[bool]:
    """Append ``<unix time>,<utilisation %>`` lines to ``path`` every 0.5 s while the block runs;
    yields False (nothing sampled) where ``nvidia-smi`` is missing."""
    if shutil.which(GPU) is None:
        yield False
        return
    script = (
        f"while true; do u=$({GPU} --query-gpu=utilization.gpu --format=csv,noheader,nounits | head -1);"
        f' echo "$(date +%s.%N),$u" >> {path}; sleep 0.5; done'
    )
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        yield True
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def samples(path: Path) -> list[tuple[float, float]]:
    if not path.exists():
        return []
    rows = (line.split(",") for line in path.read_text().splitlines())
    return [(float(t), float(u)) for t, u, *_ in rows if u.strip().replace(".", "", 1).isdigit()]


def busy(points: list[tuple[float, float]], spans: list[tuple[float, float]], sampled: bool) -> str:
    """Mean GPU utilisation over the samples inside ``spans``, as a share ("n/a": nothing sampled)."""
    inside = [u for t, u in points if any(a <= t <= b for a, b in spans)]
    return f"{statistics.fmean(inside) / 100:.2f}" if sampled and inside else "n/a"


def train_jobs(results: Path) -> list[dict]:
    """Every finished train job: group, runs (its seeds), start and end (unix time), seconds."""
    jobs = []
    for tsv in (results / "benchmarks" / "train").rglob("*.tsv"):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if not rows:
            continue
        seconds = float(rows[-1]["s"])
        end = tsv.stat().st_mtime
        seeds = tsv.stem.removeprefix("seed").split("-")
        group = tsv.relative_to(results / "benchmarks" / "train").parts[0]
        jobs.append({"group": group, "runs": len(seeds), "start": end - seconds, "end": end, "seconds": seconds})
    return jobs


def child_env() -> dict[str, str]:
    """The environment of the processes started here: this repository's src/ first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def report_blocker() -> str | None:
    """Why the PDF report cannot be rendered here (``import weasyprint`` fails in a fresh interpreter:
    the package, or the system library pango it loads at import, is missing); None when it can."""
    probe = subprocess.run(
        [sys.executable, "-c", "import weasyprint"], capture_output=True, text=True, env=child_env(), check=False
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return f"import weasyprint failed: {lines[-1] if lines else f'exit {probe.returncode}'}"


def snakemake(
    work: Path, cores: int, slots: int, limit_s: float, log: Path, targets: list[str] = ()
) -> tuple[float, bool]:
    """Run the workflow (or its ``targets``, with any further options) in ``work`` on config.yaml +
    overlay.yaml; (wall seconds, finished)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work)]
    cmd += ["--configfile", str(work / "config.yaml"), str(work / "overlay.yaml"), "--cores", str(cores)]
    cmd += ["--resources", f"gpu={slots}", "--rerun-triggers", "mtime", "--keep-going"]
    cmd += ["--rerun-incomplete", "--nolock", *targets]
    env = child_env()
    tic = time.time()
    with log.open("a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finished = False
        try:
            finished = proc.wait(timeout=max(1.0, limit_s)) == 0
        except subprocess.TimeoutExpired:
            pass
        finally:  # out of time or stopped (SIGTERM): Snakemake stops its jobs on SIGINT; what is left, with it
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.time() - tic, finished


def prepare_work(work: Path, over: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "config.yaml", work / "config.yaml")
    (work / "overlay.yaml").write_text(yaml.safe_dump(over, sort_keys=False))


def planned_runs(work: Path) -> int | None:
    """Runs the study plans (``python -m ablationlab study``), None when it cannot tell."""
    sys.path.insert(0, str(REPO / "src"))
    from ablationlab import study as abl_study

    config = yaml.safe_load((work / "config.yaml").read_text())
    with contextlib.suppress(Exception):
        from ablationlab.recipe import deep_merge  # lists replace, mappings merge: as Snakemake merges

        config = deep_merge(config, yaml.safe_load((work / "overlay.yaml").read_text()))
        table = abl_study.load(config).experiments
        return len(table["experiments"]) * len(table["seeds"])
    return None


def study(args: argparse.Namespace, root: Path) -> None:
    work = Path(args.work) / "study"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    over = overlay(config, root, args)
    over["resources"] = gpu_resources(args.jobs_per_gpu, args.device)
    prepare_work(work, over)
    log, trace = work / "snakemake.log", work / "gpu_samples.csv"
    blocker = "--no-report" if not args.report else report_blocker()
    if blocker:  # the report's jobs (render_report, publish_report) left out; every other target runs
        print(f"report: left out ({blocker}); train, summarize, track and figures run", flush=True)
    with sampling(trace) as sampled:
        limit = args.limit_s - (time.time() - args.started)  # the unpacking counts too
        omit = ["--omit-from", "render_report"] if blocker else []
        wall, finished = snakemake(work, args.cores, args.jobs_per_gpu, limit, log, omit)
    walls = work / "walls.txt"  # the calls' wall times, added up over calls
    with walls.open("a") as fh:
        fh.write(f"{wall:.1f} {int(finished)}\n")
    calls = [line.split() for line in walls.read_text().splitlines()]
    jobs, points = train_jobs(work / "results"), samples(trace)
    print(f"{'group':<20} {'runs':>5} {'span_s':>8} {'job_s':>8} {'gpu_busy':>8}")
    for group in sorted({j["group"] for j in jobs}):
        mine = [j for j in jobs if j["group"] == group]
        span = max(j["end"] for j in mine) - min(j["start"] for j in mine)
        spans = [(j["start"], j["end"]) for j in mine]
        runs, seconds = sum(j["runs"] for j in mine), sum(j["seconds"] for j in mine)
        print(f"{group:<20} {runs:>5} {span:>8.1f} {seconds:>8.1f} {busy(points, spans, sampled):>8}")
    total = sum(float(w) for w, _ in calls)
    whole = busy(points, [(0, float("inf"))], sampled)
    planned = planned_runs(work)
    print(
        f"study_wall_s={total:.1f} calls={len(calls)} runs={sum(j['runs'] for j in jobs)} of {planned}"
        f" gpu_busy={whole} finished={'yes' if finished else 'no'} report={'left out' if blocker else 'included'}"
        f" (log: {log})"
    )


@contextlib.contextmanager
def mps(work: Path, on: bool) -> Iterator[str]:
    """NVIDIA MPS for the block (its daemon's pipes and logs under ``work``): yields "on", "off" or
    "unavailable" (no ``nvidia-cuda-mps-control``)."""
    if not on:
        yield "off"
        return
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        yield "unavailable"
        return
    pipes, logs = work / "mps-pipe", work / "mps-log"
    pipes.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    started = subprocess.run([control, "-d"], env=env, check=False).returncode == 0
    saved = {k: os.environ.get(k) for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")}
    os.environ.update({k: env[k] for k in saved})
    try:
        yield "on" if started else "failed"
    finally:
        subprocess.run([control], input="quit\n", text=True, env=env, check=False)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def link_data(source: Path, target: Path) -> None:
    """Hard-link study mode's prepared data into ``target`` (the same overlay data: the same version
    folder), so that sharing mode does not prepare the same images again: Snakemake (mtime triggers)
    finds the files done, or prepares what is missing, replacing the links, not the study's files."""
    if source.is_dir() and not target.exists():
        with contextlib.suppress(OSError):
            shutil.copytree(source, target, copy_function=os.link)


def sharing(args: argparse.Namespace, root: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    groups = [g["id"] for g in config["ablations"] if g["id"] != "transfer"][: args.groups]
    work = Path(args.work) / "sharing"
    over = overlay(config, root, args, only=groups)
    over["resources"] = gpu_resources(1, args.device)
    prepare_work(work, over)  # the data first, outside the timing: every setting then trains the same jobs
    link_data(Path(args.work) / "study" / "results" / "data", work / "results" / "data")
    snakemake(work, args.cores, 1, args.limit_s, work / "snakemake.log", [*groups, "--until", "prepare_data"])
    for jobs_per_gpu in args.jobs:
        for use_mps in (False, True):
            for done in ("runs", "checkpoints", "benchmarks", "logs"):
                shutil.rmtree(work / "results" / done, ignore_errors=True)
            over["resources"] = gpu_resources(jobs_per_gpu, args.device)
            prepare_work(work, over)
            trace = work / f"gpu_samples-{jobs_per_gpu}-{int(use_mps)}.csv"
            with mps(work, use_mps) as state:
                if state == "unavailable":
                    print(f"sharing jobs_per_gpu={jobs_per_gpu} mps=unavailable", flush=True)
                    continue
                with sampling(trace) as sampled:
                    log = work / "snakemake.log"
                    wall, finished = snakemake(work, args.cores, jobs_per_gpu, args.limit_s, log, groups)
            jobs = train_jobs(work / "results")
            spans = [(j["start"], j["end"]) for j in jobs]
            print(
                f"sharing jobs_per_gpu={jobs_per_gpu} mps={state} wall_s={wall:.1f}"
                f" runs={sum(j['runs'] for j in jobs)} gpu_busy={busy(samples(trace), spans, sampled)}"
                f" finished={'yes' if finished else 'no'}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("study", "sharing"))
    parser.add_argument("--data", default=str(CIFAR_TGZ), help="image folder or .tgz of one (default: CIFAR-10)")
    parser.add_argument("--images", type=int, default=None, help="only the first N images of each split")
    parser.add_argument("--epochs", type=int, default=None, help="every experiment's epochs (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per train job (default 2)")
    parser.add_argument("--jobs-per-gpu", type=int, default=4, help="study mode: train jobs sharing the GPU")
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 4, 8], help="sharing mode: jobs per GPU")
    parser.add_argument("--groups", type=int, default=6, help="sharing mode: the first N non-transfer groups")
    parser.add_argument(
        "--limit-s", type=float, default=280, help="study: seconds of the whole call; sharing: of each setting (280)"
    )
    parser.add_argument("--work", default="/tmp/ablationlab-gpu-pipeline")
    parser.add_argument(
        "--no-report", dest="report", action="store_false", help="study: leave the report out (as without WeasyPrint)"
    )
    args = parser.parse_args(argv)
    args.started = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop snakemake's jobs too
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    root = subset(image_folder(args.data, work), args.images, work)
    print(f"image folder {root} ready in {time.perf_counter() - tic:.1f} s", flush=True)
    (study if args.mode == "study" else sharing)(args, root)


if __name__ == "__main__":
    main()
