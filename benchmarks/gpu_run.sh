#!/usr/bin/env bash
# One GPU-machine call for the default study through snakemake (gpu_pipeline.py study: every group
# timed, nvidia-smi's busy share) and N jobs per GPU with time-sharing against NVIDIA MPS
# (gpu_pipeline.py sharing), about 9 minutes in all, results under $OUT:
#
#   bash benchmarks/gpu_wheels.sh    # first, here, with network: .whl/ (wheels + CIFAR-10, ~50 MiB)
#   device run: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 600
#
# Installs .whl/*.whl into /tmp/site (the image has no registry access; see gpu_wheels.sh), puts
# /tmp/site/bin (snakemake) and a `python` that is this python3 (the rules' shell commands call
# `python`) first on PATH, checks the imports and an MLflow SQLite store, then runs
# `PARTS="pipeline sharing" bash benchmarks/gpu_all.sh`. Where `import weasyprint` fails (no pango on
# the image), the study runs every target but the report's and says so. Back in $OUT: run.log (all
# of it), summary.txt, gpu_pipeline.log, gpu_sharing.log, work.tgz (snakemake logs, job timings,
# GPU samples). Budget: PIPELINE_LIMIT_S (default 280) for the study, then 2 x SHARING_LIMIT_S (70)
# per SHARING_JOBS value (4) after the sharing groups' data preparation.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/ablationlab-gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1
echo "== $(date +%T) gpu_run.sh on $(hostname), $(nproc) cores"
t0=$SECONDS

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    { echo "error: the wheels in .whl/ did not install (carry .whl; make it with benchmarks/gpu_wheels.sh)"; exit 1; }
mkdir -p /tmp/site/pybin
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >/tmp/site/pybin/python  # a wrapper: a link loses the venv
chmod +x /tmp/site/pybin/python
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/pybin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
echo "== wheels installed in $((SECONDS - t0)) s; snakemake: $(command -v snakemake), python: $(python -c 'import sys; print(sys.executable)')"

python3 - "$WORK/preflight" <<'EOF'
import importlib, importlib.metadata as md, sys, time
from pathlib import Path
for name in ("torch", "snakemake", "mlflow", "jsonschema", "kornia", "torchinfo", "weasyprint"):
    tic = time.perf_counter()
    try:
        importlib.import_module(name)
        state = "ok"
    except Exception as exc:  # weasyprint without pango: OSError
        state = f"FAILS: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    dist = {"mlflow": "mlflow-skinny"}.get(name, name)
    version = md.version(dist) if importlib.util.find_spec(name) else "-"
    print(f"preflight {name} {version}: {state} ({time.perf_counter() - tic:.1f} s)", flush=True)
try:  # an MLflow SQLite store, as the track stage makes it
    from mlflow import MlflowClient
    root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    eid = client.create_experiment(f"preflight-{time.time():.0f}", artifact_location=(root / "art").as_uri())
    run = client.create_run(eid)
    client.log_param(run.info.run_id, "p", 1)
    client.log_metric(run.info.run_id, "m", 0.5, step=1)
    client.set_terminated(run.info.run_id)
    print("preflight mlflow sqlite store: ok,", len(client.search_runs([eid])), "run logged", flush=True)
except Exception as exc:
    print(f"preflight mlflow sqlite store: FAILS: {type(exc).__name__}: {exc}", flush=True)
EOF

[[ -f .whl/cifar10-jpeg.tgz && -z ${CIFAR:-} ]] && export CIFAR=$PWD/.whl/cifar10-jpeg.tgz
export PIPELINE_LIMIT_S=${PIPELINE_LIMIT_S:-280} SHARING_LIMIT_S=${SHARING_LIMIT_S:-70}
export SHARING_JOBS=${SHARING_JOBS:-4} SHARING_PREPARE_S=${SHARING_PREPARE_S:-60}
PARTS=${PARTS:-pipeline sharing} OUT=$OUT WORK=$WORK bash benchmarks/gpu_all.sh

# the small files of the work folders, for a later look (no weights, no data): a missing one is skipped
(cd "$WORK/pipeline" 2>/dev/null && shopt -s nullglob &&
    tar czf "$OUT/work.tgz" --ignore-failed-read study/*.{log,csv,txt,yaml} sharing/*.{log,csv,yaml} \
        study/results/{benchmarks,logs,summary,mlflow.json} 2>/dev/null)
echo "== $(date +%T) gpu_run.sh done after $((SECONDS - t0)) s"
sleep 1  # let tee write run.log out
