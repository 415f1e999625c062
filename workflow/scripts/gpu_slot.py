"""Run a command on GPUs of its own: ``python gpu_slot.py N -- COMMAND ...``.

On a multi-GPU workstation Snakemake's ``--resources gpu=K`` caps how many GPUs the
running jobs request in total, but does not say *which* GPU a job gets; without help
every job would land on GPU 0. This wrapper takes N free GPUs from a pool of lock files
(``fcntl.flock`` on ``$ABLATIONLAB_GPU_LOCKS/gpu<i>.lock``, default
``$TMPDIR/ablationlab-gpu-locks``), sets ``CUDA_VISIBLE_DEVICES`` to them and ``exec``s
the command, which inherits the locks: they are released when the command exits, however
it exits (the kernel drops flocks of a dead process). Waits while all GPUs are taken.

Nothing is done (the command runs as is) when N is 0, when ``CUDA_VISIBLE_DEVICES`` is
already set (SLURM sets it per allocation) or when no GPU is found. The GPUs are listed by
``nvidia-smi`` or given as ``ABLATIONLAB_GPUS=0,1,2,3``.
"""

from __future__ import annotations

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


def acquire(count: int, ids: list[str], lock_dir: Path, poll: float = 2.0) -> list[str]:
    """Lock ``count`` GPUs of ``ids`` (waiting until enough are free); the locks stay open."""
    if count > len(ids):
        raise SystemExit(f"gpu_slot: {count} GPU(s) requested but only {len(ids)} exist ({','.join(ids)})")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        held: list[tuple[str, int]] = []
        for gpu in ids:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == count:
                for _, fd in held:
                    os.set_inheritable(fd, True)  # kept by the exec'd command
                return [g for g, _ in held]
        for _, fd in held:
            os.close(fd)
        time.sleep(poll)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    count, command = int(argv[0]), argv[2:]
    if count > 0 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        ids = gpu_ids()
        if ids:
            lock_dir = Path(os.environ.get("ABLATIONLAB_GPU_LOCKS")
                            or Path(tempfile.gettempdir()) / "ablationlab-gpu-locks")
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(acquire(count, ids, lock_dir))
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
