#!/usr/bin/env bash
# Every GPU measurement of the real-data and hardware-pace benchmarks in one bounded run on one GPU
# machine: a 10-epoch run of the source reports' baseline, throughput at batch 64 and 512, the
# drop_last fidelity table on real CIFAR-10 (5 seeds with drop_last true: the "15 runs" figure; 3
# with false), the default study's train jobs (bounded by STUDY_MINUTES) and a transfer sample.
#
#   OUT=gpu-out CIFAR=../shared/data/cifar10-jpeg.tgz bash benchmarks/gpu_all.sh
#
# Each step is bounded by `timeout`, prints as it goes and appends its figures to $OUT/summary.txt;
# a failing step does not stop the next. Needs torch with CUDA, and this repository's src/ on the
# path (set here); on the GPU image the packages it lacks (snakemake, mlflow, jsonschema, kornia ...)
# come as wheels: benchmarks/gpu_wheels.sh makes them, benchmarks/gpu_run.sh installs them and runs this.
set -u
OUT=${OUT:-gpu-out}
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg.tgz}
STUDY_MINUTES=${STUDY_MINUTES:-4}
WORK=${WORK:-/tmp/ablationlab-gpu}
DEVICE=${DEVICE:-cuda}     # cpu (with the small sizes below) to try this script out without a GPU
EPOCHS=${EPOCHS:-10}
SEEDS_TRUE=${SEEDS_TRUE:-5}
SEEDS_FALSE=${SEEDS_FALSE:-3}
IMAGES=${IMAGES:-20000}
PARTS=${PARTS:-startup single throughput fidelity cosine study}  # which of the steps below to run
want() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
say() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS COMMAND...: run bounded, output to $OUT/NAME.log and the console
    local name=$1 limit=$2; shift 2
    say "$name (at most ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    say "$name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"

# the prepared CIFAR-10 tensors (ablationlab.data.prepare, imagefolder), for the steps that read them
# (pipeline and sharing prepare their own through snakemake)
want single || want startup || want study &&
step prepare 240 python3 -c "
import sys, time; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from train_jobs import prepared
t = time.perf_counter(); print(prepared('$CIFAR', Path('$WORK')), f'{time.perf_counter() - t:.1f} s')"
DATA=$WORK/data

# 1. one 10-epoch run of the source reports' baseline, start-up and evaluation included (target <= 8 s)
want single && for seed in 0 1; do
    step "single_run_$seed" 120 bash -c "TIMEFORMAT='single_run_wall_s=%R'; time python3 -m ablationlab train \
        --data $DATA --recipe '{\"epochs\": $EPOCHS}' --seed $seed --out $WORK/single/s$seed \
        --checkpoint-dir $WORK/single/c$seed --evaluate --threads 2 --device $DEVICE"
done
want single && grep -h "single_run_wall_s\|test_acc" "$OUT"/single_run_*.log | tee -a "$OUT/summary.txt"

# 2. throughput: the library's loop vs compute-only vs a naive torchvision loader (target >= 0.95x compute)
want throughput && for bs in 64 512; do
    step "throughput_$bs" 150 python3 benchmarks/throughput.py --device "$DEVICE" --images "$IMAGES" --batch-size "$bs" \
        --batches 150 --repeats 3
    tail -1 "$OUT/throughput_$bs.log" | sed "s/^/batch $bs: /" >> "$OUT/summary.txt"
done

# 3. fidelity on real CIFAR-10: drop_last true (5 seeds: 15 runs, target <= 30 s), then false (3 seeds)
want fidelity && step fidelity_true 240 python3 benchmarks/fidelity.py --data "$CIFAR" --work "$WORK" --seeds "$SEEDS_TRUE" \
    --epochs "$EPOCHS" --drop-last true --parallel 3 --threads 2 --device "$DEVICE" --json "$OUT/fidelity_true.json"
want fidelity && step fidelity_false 300 python3 benchmarks/fidelity.py --data "$CIFAR" --work "$WORK" --seeds "$SEEDS_FALSE" \
    --epochs "$EPOCHS" --drop-last false --parallel 3 --threads 2 --device "$DEVICE" --json "$OUT/fidelity_false.json"
# the same with a decaying learning rate (what the diagnostics advise for the source reports' constant one)
want cosine && step fidelity_cosine 240 python3 benchmarks/fidelity.py --data "$CIFAR" --work "$WORK" \
    --seeds "$SEEDS_TRUE" --epochs "$EPOCHS" --drop-last true --scheduler cosine --parallel 3 --threads 2 \
    --device "$DEVICE" --json "$OUT/fidelity_cosine.json"
want fidelity || want cosine && grep -h "runs in\|^true\|^false" "$OUT"/fidelity_*.log >> "$OUT/summary.txt"

# where a train job's start-up goes: interpreter + torch, CUDA context, the library, the data
want startup && step startup 60 python3 -c "
import time; t0 = time.perf_counter()
import torch; t1 = time.perf_counter()
torch.zeros(1, device='$DEVICE'); t2 = time.perf_counter()
from ablationlab import train, data; t3 = time.perf_counter()
x, y = data.load_split('$DATA', 'train'); x.to('$DEVICE'); t4 = time.perf_counter()
torch.backends.cudnn.benchmark = True
m = torch.nn.Conv2d(3, 8, 3).to('$DEVICE'); m(torch.zeros(2, 3, 32, 32, device='$DEVICE')).sum().backward(); t5 = time.perf_counter()
print(f'startup_s import_torch={t1 - t0:.2f} device_init={t2 - t1:.2f} import_ablationlab={t3 - t2:.2f} '
      f'load_train_split={t4 - t3:.2f} first_conv_step={t5 - t4:.2f}')"
want startup && grep -h "startup_s" "$OUT/startup.log" >> "$OUT/summary.txt"

# 4. the default study's train jobs (no transfer) and a transfer sample (target <= 5 min)
want study && step gpu_study 500 python3 benchmarks/gpu_study.py --data "$CIFAR" --work "$WORK" \
    --parallel 8 --threads 2 --minutes "$STUDY_MINUTES" --device "$DEVICE" ${STUDY_EXTRA:-}
want study && grep -h "study_wall_s" "$OUT/gpu_study.log" >> "$OUT/summary.txt"
# 5. the default study through snakemake, every experiment (transfer with weights: none), a table per
# group; a second call with the same work folder goes on where the first stopped (PARTS=pipeline)
want pipeline && step gpu_pipeline $((${PIPELINE_LIMIT_S:-270} + 30)) python3 benchmarks/gpu_pipeline.py study --data "$CIFAR" \
    --work "$WORK/pipeline" --device "$DEVICE" --limit-s "${PIPELINE_LIMIT_S:-270}" ${PIPELINE_EXTRA:-}
want pipeline && grep -h "^report:" "$OUT/gpu_pipeline.log" >> "$OUT/summary.txt"
want pipeline && grep -h -A40 "^group " "$OUT/gpu_pipeline.log" >> "$OUT/summary.txt"
# 6. N train jobs per GPU, plain time-sharing against NVIDIA MPS (PARTS=sharing SHARING_JOBS=4: one
# N per call keeps a call within 5 minutes)
# (its step's bound: two settings per --jobs value, and snakemake's prepare_data before them)
SHARING_STEP_S=$((2 * $(wc -w <<<"${SHARING_JOBS:-4}") * ${SHARING_LIMIT_S:-100} + ${SHARING_PREPARE_S:-100}))
want sharing && step gpu_sharing "$SHARING_STEP_S" python3 benchmarks/gpu_pipeline.py sharing --data "$CIFAR" \
    --work "$WORK/pipeline" --device "$DEVICE" --jobs ${SHARING_JOBS:-4} --limit-s "${SHARING_LIMIT_S:-100}" \
    ${SHARING_EXTRA:-}
want sharing && grep -h "^sharing" "$OUT/gpu_sharing.log" >> "$OUT/summary.txt"

# the train jobs' steps, over the runs of every step (runs/, pipeline/*/results/runs/)
python3 - "$WORK" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys, collections
from pathlib import Path
seen = collections.Counter()
work = Path(sys.argv[1])
for f in (f for runs in [work / "runs", *work.glob("pipeline/*/results/runs")] for f in runs.rglob("train.json")):
    t = json.loads(f.read_text())
    seen["cuda_graph" if t.get("cuda_graph") else "eager"] += 1
print("train jobs' steps:", dict(seen))
EOF
say done
