"""GPU sharing on a workstation: workflow/scripts/gpu_slot.py with --jobs-per-gpu, over a fake GPU list
(ABLATIONLAB_GPUS), with real concurrent processes and real flocks; and the `gpu` resource the
workflow gives each group's jobs (resources.<group>.jobs_per_gpu)."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow" / "scripts" / "gpu_slot.py"


def _holder(tmp_path: Path, count: int = 1, jobs_per_gpu: int = 1, gpus: str = "0,1,2") -> subprocess.Popen:
    """gpu_slot.py running a command that prints its CUDA_VISIBLE_DEVICES, then holds it until killed."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env |= {"ABLATIONLAB_GPUS": gpus, "ABLATIONLAB_GPU_LOCKS": str(tmp_path / "locks")}
    script = "import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES', '-'), flush=True); time.sleep(600)"
    return subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            str(count),
            "--jobs-per-gpu",
            str(jobs_per_gpu),
            "--",
            sys.executable,
            "-c",
            script,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _gpu(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip()


def _still_waiting(proc: subprocess.Popen, seconds: float = 2.5) -> bool:
    """True when ``proc`` has printed nothing after ``seconds`` (gpu_slot polls every 2 s)."""
    try:
        proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def test_shared_gpus_spread_first_and_never_hand_out_a_slot_twice(tmp_path):
    # one at a time: the first three jobs land on three different GPUs before any GPU gets a second job
    first = [_holder(tmp_path, jobs_per_gpu=2) for _ in range(1)]
    got = [_gpu(first[0])]
    for _ in range(2):
        first.append(_holder(tmp_path, jobs_per_gpu=2))
        got.append(_gpu(first[-1]))
    assert sorted(got) == ["0", "1", "2"]
    # the other three slots, requested all at once (racing each other): each GPU ends with exactly two jobs
    rest = [_holder(tmp_path, jobs_per_gpu=2) for _ in range(3)]
    got += [_gpu(p) for p in rest]
    assert collections.Counter(got) == {"0": 2, "1": 2, "2": 2}
    late = _holder(tmp_path, jobs_per_gpu=2)  # every slot taken: it waits ...
    assert _still_waiting(late)
    victim = rest[1]
    victim.send_signal(signal.SIGKILL)  # ... until a holder dies (its flock goes with it)
    victim.wait(timeout=30)
    assert _gpu(late) == got[4]
    _stop(*first, *rest, late)


def test_whole_gpu_jobs_and_sharers_exclude_each_other(tmp_path):
    sharer = _holder(tmp_path, jobs_per_gpu=4, gpus="0,1")
    assert _gpu(sharer) == "0"
    whole = _holder(tmp_path, gpus="0,1")
    assert _gpu(whole) == "1"  # the whole-GPU job takes the GPU nobody shares
    second_whole = _holder(tmp_path, gpus="0,1")
    assert _still_waiting(second_whole)  # GPU 0 is not free while one job shares it
    other_sharer = _holder(tmp_path, jobs_per_gpu=4, gpus="0,1")
    assert _gpu(other_sharer) == "0"  # sharers join the shared GPU, never the whole-GPU job's
    _stop(sharer, other_sharer)
    assert _gpu(second_whole) == "0"
    _stop(whole, second_whole)


def test_multi_gpu_job_takes_distinct_gpus(tmp_path):
    pair = _holder(tmp_path, count=2, jobs_per_gpu=2, gpus="0,1")
    assert sorted(_gpu(pair).split(",")) == ["0", "1"]
    one = _holder(tmp_path, jobs_per_gpu=2, gpus="0,1")  # one slot of each GPU is still free
    assert _gpu(one) in ("0", "1")
    _stop(pair, one)


def test_usage_errors():
    for argv in (["1"], ["1", "--"], ["-1", "--", "true"], ["1", "--jobs-per-gpu", "0", "--", "true"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "usage: gpu_slot.py N [--jobs-per-gpu J] -- COMMAND" in proc.stderr, argv


def test_gpu_resource_counts_slots_locally(tmp_path):
    """Dry run: with sharing, each job's gpu resource is its share of slots (lcm of jobs_per_gpu per GPU)
    and gpu_slot.py gets the GPU count and jobs_per_gpu; without sharing nothing changes (gpu = GPUs)."""
    (tmp_path / "share.yaml").write_text(
        "device: cuda\nresources:\n  default: {jobs_per_gpu: 3}\n  dropout: {jobs_per_gpu: 2}\n"
        "  batch_norm: {jobs_per_gpu: null}\n  transfer: {gpu: 1, jobs_per_gpu: 1}\n"
    )
    (tmp_path / "exclusive.yaml").write_text("device: cuda\n")
    found = {}
    for name in ("share", "exclusive"):
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "snakemake"),
                "-n",
                "-p",
                "--cores",
                "2",
                "--configfile",
                "presets/smoke.yaml",
                str(tmp_path / f"{name}.yaml"),
                "--directory",
                str(tmp_path / name),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        blocks = re.findall(r"^rule (train_\w+):\n((?:    .*\n)+)Shell command: (.*)$", proc.stdout, re.M)
        found[name] = {
            rule: (
                re.search(r"gpu=(\d+), .*jobs_per_gpu=(\d+)", block).groups(),
                re.search(r"gpu_slot\.py (\d+ --jobs-per-gpu \d+) --", shell).group(1),
            )
            for rule, block, shell in blocks
        }
    # slots per GPU: lcm(3, 2, 3) = 6 (batch_norm inherits the default's 3)
    assert found["share"] == {
        f"train_{group}": ((str(6 // jobs), str(jobs)), f"1 --jobs-per-gpu {jobs}")
        for group, jobs in (("baseline", 3), ("batch_norm", 3), ("dropout", 2))
    }
    assert set(found["exclusive"].values()) == {(("1", "1"), "1 --jobs-per-gpu 1")}
