"""A throwaway single-node SLURM cluster on this machine (Debian ``slurm-wlm`` + ``munge``).

Everything lives in one directory: a private munge key and socket (``/etc/munge`` is not used),
``slurm.conf``, state, spool, logs and the pids of the three daemons this module started
(``munged``, ``slurmctld``, ``slurmd``, on free ports). ``down`` stops exactly those pids.
Clients find the cluster through ``SLURM_CONF``; the conf is also copied to
``/etc/slurm/slurm.conf`` for the job steps that drop that variable (a file already there is
set aside and put back by ``down``), so one such cluster runs at a time.

By hand (as root)::

    python tests/slurm/cluster.py up      # installs slurm-wlm + munge if missing, prints `export SLURM_CONF=...`
    python tests/slurm/cluster.py down    # cancels its jobs, stops its daemons, removes the directory

In tests: ``install()`` (raises ``ClusterUnavailable`` -> skip), ``up(root)`` -> ``Cluster``,
``cluster.down()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "srun")
DEFAULT_DIR = Path("/tmp/ablationlab-slurm")
STATE_FILE = "cluster.json"
# Snakemake's slurm-jobstep plugin strips every SLURM_* variable (SLURM_CONF included) before its
# nested `srun`, which then reads the compiled-in default: so the cluster's conf is also put there
# (the previous file, if any, is kept aside and restored by `down`).
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
SYSTEM_CONF_SAVED = SYSTEM_CONF.with_name("slurm.conf.ablationlab-saved")
MARK = "# single-node test cluster written by tests/slurm/cluster.py in "

SLURM_CONF = """\
{mark}{root}
ClusterName=ablationlab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# squeue still lists finished jobs for 10 min: snakemake's `--slurm-status-command squeue` needs that
MinJobAge=600
KillWait=2
ReturnToService=2
SlurmdParameters=config_overrides
{gres_types}NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory}{gres} State=UNKNOWN
{partitions}
"""
# Fake GPUs: gres.conf entries backed by device files that exist (no GPU needed); AutoDetect=off keeps
# slurmd from probing NVML. SLURM still allocates them and sets CUDA_VISIBLE_DEVICES in the job.
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random")
GRES_CONF = "AutoDetect=off\n{lines}\n"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot run on this machine at all (not root, no apt, install failed): skip, don't fail."""


class ClusterError(RuntimeError):
    """SLURM is installed but the cluster did not come up (or a command on it failed)."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now (held open together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("MemTotal missing from /proc/meminfo")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def install(timeout: float = 900) -> float:
    """Install slurm-wlm and munge with apt when missing; returns the seconds it took (0 when present).

    Raises ClusterUnavailable when not root, apt-get is absent or the install fails. Package
    scripts are kept from starting the distribution's own daemons (a temporary policy-rc.d).
    """
    if not missing_binaries():
        return 0.0
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise ClusterUnavailable(
            f"SLURM binaries {missing_binaries()} missing and not root: cannot apt-get install {' '.join(PACKAGES)}"
        )
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("SLURM binaries missing and no apt-get on this machine")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# tests/slurm/cluster.py: no daemon starts during apt-get install\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        ):
            try:
                proc = subprocess.run(
                    [*cmd[:1], "-o", "DPkg::Lock::Timeout=600", *cmd[1:]],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise ClusterUnavailable(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from None
            if proc.returncode != 0:
                raise ClusterUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if missing_binaries():
        raise ClusterUnavailable(f"apt-get installed {PACKAGES} but {missing_binaries()} are still missing")
    return time.monotonic() - start


@dataclass
class Cluster:
    """A running cluster: ``env`` (os.environ + SLURM_CONF) is what every SLURM client call needs."""

    root: Path
    pids: dict[str, int] = field(default_factory=dict)
    node: str = ""
    startup_seconds: float = 0.0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``sinfo``, ``sbatch`` ...) against this cluster; text output."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def jobs(self) -> dict[str, str]:
        """{job id: state} of every job slurmctld still knows (finished ones for MinJobAge)."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%T").stdout
        return dict(line.split("|", 1) for line in out.split())

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        """Block until a job leaves PENDING/RUNNING/COMPLETING; returns its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.jobs().get(job_id, "")
            if state and state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                return state
            time.sleep(0.2)
        raise ClusterError(f"job {job_id} not finished after {timeout} s\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        """Tail of the daemons' logs, for error messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def save(self) -> None:
        state = {"pids": self.pids, "node": self.node, "startup_seconds": self.startup_seconds}
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.root / STATE_FILE)

    @classmethod
    def load(cls, root: Path) -> Cluster:
        state = json.loads((Path(root) / STATE_FILE).read_text())
        return cls(Path(root), state["pids"], state["node"], state["startup_seconds"])

    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps it open)
        with log:
            proc = subprocess.Popen(
                cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.pids[name] = proc.pid
        self._procs[name] = proc
        self.save()

    def _ours(self, name: str, pid: int) -> bool:
        """True while ``pid`` is still the daemon we started: our child that has not exited, or (started
        by an earlier ``up`` process) a process whose command line names this daemon and directory."""
        if name in self._procs:
            return self._procs[name].poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return name in cmdline and str(self.root) in cmdline

    def down(self, remove: bool = False) -> None:
        """Cancel this cluster's jobs, stop the daemons it started (by pid), optionally delete its directory."""
        if self.pids.get("slurmctld") and self._ours("slurmctld", self.pids["slurmctld"]):
            subprocess.run(
                ["scancel", "--full", "--quiet", "--user", str(os.getuid())],
                env=self.env,
                capture_output=True,
                timeout=30,
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    states = set(self.jobs().values())
                except (ClusterError, subprocess.TimeoutExpired):
                    break
                if not states & {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"}:
                    break
                time.sleep(0.2)
        _stop([pid for name, pid in self.pids.items() if self._ours(name, pid)])
        self.pids.clear()
        self._procs.clear()
        _release_system_conf(self.root)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root.exists():
            self.save()


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited: reaped here when it is our child, else absent or a zombie."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child (started by an earlier `up`)
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _stop(pids: list[int], timeout: float = 10) -> None:
    """SIGTERM every pid, SIGKILL those still alive after ``timeout`` s."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if not _gone(pid)]
        if not alive:
            return
        pids = alive


def _system_conf_owner() -> Path | None:
    """The cluster directory named by /etc/slurm/slurm.conf when one of ours wrote it, else None."""
    try:
        first = SYSTEM_CONF.read_text().split("\n", 1)[0]
    except OSError:
        return None
    return Path(first[len(MARK) :]) if first.startswith(MARK) else None


def _claim_system_conf(cluster: Cluster) -> None:
    """Copy the cluster's slurm.conf to /etc/slurm (saving a foreign one; refusing a live cluster's)."""
    owner = _system_conf_owner()
    if owner is not None and owner != cluster.root and (owner / STATE_FILE).exists():
        other = Cluster.load(owner)
        if any(other._ours(name, pid) for name, pid in other.pids.items()):
            raise ClusterError(
                f"another test cluster ({owner}) is running and owns {SYSTEM_CONF}: "
                f"`python tests/slurm/cluster.py down --dir {owner}` first"
            )
    if owner is None and SYSTEM_CONF.exists():
        if SYSTEM_CONF_SAVED.exists():
            raise ClusterError(f"both {SYSTEM_CONF} and {SYSTEM_CONF_SAVED} exist: keep one, then retry")
        os.replace(SYSTEM_CONF, SYSTEM_CONF_SAVED)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    tmp = SYSTEM_CONF.with_name(f".slurm.conf.{os.getpid()}")
    shutil.copyfile(cluster.conf, tmp)
    tmp.chmod(0o644)
    os.replace(tmp, SYSTEM_CONF)


def _release_system_conf(root: Path) -> None:
    """Undo ``_claim_system_conf`` when /etc/slurm/slurm.conf is still this cluster's."""
    if _system_conf_owner() != root:
        return
    if SYSTEM_CONF_SAVED.exists():
        os.replace(SYSTEM_CONF_SAVED, SYSTEM_CONF)
    else:
        SYSTEM_CONF.unlink(missing_ok=True)


def _wait(what: str, check, cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not cluster._ours(name, pid):
                raise ClusterError(f"{name} (pid {pid}) exited while waiting for {what}\n{cluster.logs()}")
        if check():
            return
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}")


def up(
    root: Path = DEFAULT_DIR,
    *,
    partitions: tuple[str, ...] = ("debug",),
    cpus: int | None = None,
    memory_mb: int | None = None,
    gpus: int = 0,
    timeout: float = 60,
) -> Cluster:
    """Start munged, slurmctld and slurmd in ``root`` (created, must be empty or absent); wait until
    the node is idle and ``srun`` runs a job. ``partitions`` all hold the one node, the first is the
    default. ``gpus`` fake GPUs (``FAKE_GPU_FILES``) are declared as the node's gres. Needs root and
    the binaries (see ``install``)."""
    if gpus > len(FAKE_GPU_FILES):
        raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs (one device file each), not {gpus}")
    if missing_binaries():
        raise ClusterUnavailable(f"SLURM binaries missing: {missing_binaries()} (run install() first)")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise ClusterUnavailable("the SLURM daemons of the test cluster must run as root")
    start = time.monotonic()
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        raise ClusterError(f"{root} is not empty (a cluster already there? `down` it first)")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged wants every directory above its socket searchable by all
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    key.touch(mode=0o600)
    key.write_bytes(os.urandom(1024))
    host = socket.gethostname().split(".")[0]
    total_mb = _total_memory_mb()
    cpus = cpus or len(os.sched_getaffinity(0))
    memory_mb = memory_mb or max(total_mb - max(512, total_mb // 10), 256)
    ctld_port, slurmd_port = _free_ports(2)
    partition_lines = [
        f"PartitionName={name} Nodes={host} Default={'YES' if not i else 'NO'} MaxTime=INFINITE State=UP"
        for i, name in enumerate(dict.fromkeys(partitions))
    ]
    (root / "slurm.conf").write_text(
        SLURM_CONF.format(
            mark=MARK,
            host=host,
            root=root,
            ctld_port=ctld_port,
            slurmd_port=slurmd_port,
            cpus=cpus,
            memory=memory_mb,
            partitions="\n".join(partition_lines),
            gres_types="GresTypes=gpu\n" if gpus else "",
            gres=f" Gres=gpu:{gpus}" if gpus else "",
        )
    )
    if gpus:  # slurmd reads gres.conf next to its slurm.conf
        (root / "gres.conf").write_text(
            GRES_CONF.format(lines="\n".join(f"NodeName={host} Name=gpu File={f}" for f in FAKE_GPU_FILES[:gpus]))
        )
    cluster = Cluster(root, node=host)
    try:
        _claim_system_conf(cluster)
        sock = root / "munge" / "munge.socket"
        cluster._start(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={root}/munge/munged.pid",
                f"--seed-file={root}/munge/munged.seed",
                f"--log-file={root}/log/munged.log",
                "--num-threads=2",
            ],
        )
        _wait("munged's socket", sock.exists, cluster, timeout)
        cluster._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(cluster.conf)])
        cluster._start("slurmd", ["slurmd", "-D", "-f", str(cluster.conf)])

        def node_idle() -> bool:
            proc = cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10)
            return proc.returncode == 0 and set(proc.stdout.split()) == {"idle"}

        _wait(f"node {host} idle in sinfo", node_idle, cluster, timeout)
        proc = cluster.run("srun", "--quiet", "--ntasks=1", "--time=1", "hostname", check=False, timeout=timeout)
        if proc.returncode != 0:
            raise ClusterError(f"`srun hostname` failed: {proc.stderr.strip()}\n{cluster.logs()}")
    except BaseException:
        cluster.down(remove=True)  # the error message carries the logs' tails
        raise
    cluster.startup_seconds = round(time.monotonic() - start, 2)
    cluster.save()
    return cluster


def down(root: Path = DEFAULT_DIR, remove: bool = True) -> None:
    """Stop the cluster recorded in ``root`` (by its pids) and delete the directory."""
    if not (Path(root) / STATE_FILE).exists():
        raise ClusterError(f"no cluster in {root} ({STATE_FILE} missing)")
    Cluster.load(Path(root)).down(remove=remove)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cluster directory [{DEFAULT_DIR}]")
    parser.add_argument(
        "--partition",
        action="append",
        default=None,
        help="partition name (repeatable; the first is the default) [debug]",
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            seconds = install()
            cluster = up(args.dir, partitions=tuple(args.partition or ["debug"]))
            print(f"# installed in {seconds:.1f} s, cluster up in {cluster.startup_seconds:.1f} s", file=sys.stderr)
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            down(args.dir)
    except (ClusterUnavailable, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
