"""Run a command on GPUs of its own: ``python gpu_slot.py N [--jobs-per-gpu J] -- COMMAND ...``.

On a multi-GPU workstation Snakemake's ``--resources gpu=K`` caps how many GPU slots the
running jobs hold in total, but does not say *which* GPU a job gets; without help every
job would land on GPU 0. This wrapper takes N GPUs from a pool of lock files
(``fcntl.flock`` in ``$ABLATIONLAB_GPU_LOCKS``, default ``$TMPDIR/ablationlab-gpu-locks``),
sets ``CUDA_VISIBLE_DEVICES`` to them and ``exec``s the command, which inherits the locks:
they are released when the command exits, however it exits (the kernel drops flocks of a
dead process). Waits while no GPU is free.

With ``--jobs-per-gpu J`` (J > 1) a GPU is shared: the job takes one of J slots of each GPU
(``gpu<i>.slot<j>.lock``, exclusive) and holds ``gpu<i>.lock`` shared; a whole-GPU job
(J = 1) holds ``gpu<i>.lock`` exclusively, so it never shares a GPU with anybody. Slots are
handed out level by level (slot 0 of every GPU, then slot 1 ...): jobs spread over the GPUs
before they double up.

Nothing is done (the command runs as is) when N is 0, when ``CUDA_VISIBLE_DEVICES`` is
already set (SLURM sets it per allocation) or when no GPU is found. The GPUs are listed by
``nvidia-smi`` or given as ``ABLATIONLAB_GPUS=0,1,2,3``. The chosen GPUs are printed to
stderr (the job's log).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def gpu_ids() -> list[str]:
    listed = os.environ.get("ABLATIONLAB_GPUS")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _lock(path: Path, mode: int) -> int | None:
    """An open fd holding ``flock(mode)`` on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _take(gpu: str, slot: int | None, lock_dir: Path) -> list[int] | None:
    """Lock one GPU: the whole of it (``slot`` None) or one shared slot; the fds, or None if busy."""
    if slot is None:
        fd = _lock(lock_dir / f"gpu{gpu}.lock", fcntl.LOCK_EX)
        return None if fd is None else [fd]
    shared = _lock(lock_dir / f"gpu{gpu}.lock", fcntl.LOCK_SH)  # keeps whole-GPU jobs off it
    if shared is None:
        return None
    fd = _lock(lock_dir / f"gpu{gpu}.slot{slot}.lock", fcntl.LOCK_EX)
    if fd is None:
        os.close(shared)
        return None
    return [shared, fd]


def try_acquire(count: int, ids: list[str], lock_dir: Path, jobs_per_gpu: int = 1) -> tuple[list[str], list[int]]:
    """One attempt at ``count`` distinct GPUs of ``ids``: (GPUs, open lock fds), or ([], []) when too few
    are free (nothing stays locked then). Shared slots go level by level: spread before doubling up."""
    levels = [None] if jobs_per_gpu <= 1 else range(jobs_per_gpu)
    got: list[str] = []
    fds: list[int] = []
    for slot in levels:
        for gpu in ids:
            held = None if gpu in got else _take(gpu, slot, lock_dir)
            if held is not None:
                got.append(gpu)
                fds += held
                if len(got) == count:
                    return got, fds
    for fd in fds:
        os.close(fd)
    return [], []


def acquire(count: int, ids: list[str], lock_dir: Path, jobs_per_gpu: int = 1, poll: float = 2.0) -> list[str]:
    """Lock ``count`` GPUs of ``ids`` (waiting until enough are free); the locks stay open, inherited
    by the command that ``main`` execs."""
    if count > len(ids):
        raise SystemExit(f"gpu_slot: {count} GPU(s) requested but only {len(ids)} exist ({','.join(ids)})")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        got, fds = try_acquire(count, ids, lock_dir, jobs_per_gpu)
        if got:
            for fd in fds:
                os.set_inheritable(fd, True)  # kept by the exec'd command
            return got
        time.sleep(poll)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_slot.py", usage="%(prog)s N [--jobs-per-gpu J] -- COMMAND ...",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int, help="GPUs the command gets (0: run it as is)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU [1: a GPU of its own]")
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("a command is needed after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    if args.count < 0 or args.jobs_per_gpu < 1:
        parser.error("needs N >= 0 and J >= 1")
    args.command = argv[split + 1:]
    return args


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.count > 0 and "CUDA_VISIBLE_DEVICES" in os.environ:
        print(f"gpu_slot: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} (set by the scheduler)",
              file=sys.stderr, flush=True)
    elif args.count > 0:
        ids = gpu_ids()
        if ids:
            lock_dir = Path(os.environ.get("ABLATIONLAB_GPU_LOCKS")
                            or Path(tempfile.gettempdir()) / "ablationlab-gpu-locks")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(acquire(args.count, ids, lock_dir, args.jobs_per_gpu))
            print(f"gpu_slot: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} "
                  f"({args.jobs_per_gpu} job(s) per GPU)", file=sys.stderr, flush=True)
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
