"""A real single-node SLURM cluster (tests/slurm/cluster.py): its own bring-up and teardown, then the
smoke study (two seeds, one group on fake GPUs) submitted through ``--profile profiles/slurm``: job
arrays, counted at ``sbatch`` (a logging wrapper early on PATH), results equal to a local run's.

Needs root (apt-get install slurm-wlm munge, daemons as root): skipped with the reason otherwise.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablationlab_test_cluster", REPO / "tests" / "slurm" / "cluster.py")
cluster_mod = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_mod)


def _profile_partitions() -> tuple[str, ...]:
    """Partitions named in profiles/slurm/config.yaml (default-resources first): the test cluster has them all."""
    path = REPO / "profiles" / "slurm" / "config.yaml"
    if not path.exists():
        return ("debug",)
    profile = yaml.safe_load(path.read_text())
    names = [profile.get("default-resources", {}).get("slurm_partition")]
    names += [res.get("slurm_partition") for res in (profile.get("set-resources") or {}).values()]
    return tuple(dict.fromkeys(n for n in names if n)) or ("debug",)


@pytest.fixture(scope="session")
def installed() -> float:
    """slurm-wlm + munge present (apt-get installs them as root); seconds the install took."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("no SLURM cluster: needs root (apt-get install slurm-wlm munge; the daemons run as root)")
    try:
        return cluster_mod.install()
    except cluster_mod.ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster: {exc}")


@pytest.fixture(scope="session")
def slurm(installed):
    """A running single-node cluster for the whole session; its daemons are stopped (by pid) at the end."""
    root = Path(tempfile.mkdtemp(prefix="ablationlab-slurm-", dir="/tmp"))  # short, world-searchable (munged)
    cluster = cluster_mod.up(root, partitions=(*_profile_partitions(), GPU_PARTITION), gpus=2)
    print(f"\nslurm: apt install {installed:.1f} s, cluster up in {cluster.startup_seconds:.1f} s", file=sys.stderr)
    yield cluster
    cluster.down(remove=True)


@pytest.fixture(scope="session")
def sbatch_wrapper(installed, tmp_path_factory) -> Path:
    """A directory with an ``sbatch`` that appends its argv (JSON) to $ABLATIONLAB_SBATCH_LOG, then execs
    the real one: put first on PATH, it counts every submission the plugin makes."""
    real = shutil.which("sbatch")
    folder = tmp_path_factory.mktemp("sbatch-wrapper")
    (folder / "sbatch").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['ABLATIONLAB_SBATCH_LOG'], 'a') as log:\n"
        "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
    )
    (folder / "sbatch").chmod(0o755)
    return folder


def _new_dir(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.rmdir()
    return root


def test_cli_up_and_down_by_hand(installed):
    """`cluster.py up --dir D` leaves a working cluster behind; a second one is refused while it owns
    /etc/slurm/slurm.conf; `down --dir D` stops exactly its daemons and restores /etc/slurm."""
    system_conf_before = cluster_mod.SYSTEM_CONF.read_bytes() if cluster_mod.SYSTEM_CONF.exists() else None
    script = [sys.executable, str(REPO / "tests" / "slurm" / "cluster.py")]
    first, second = _new_dir("ablationlab-slurm-cli-"), _new_dir("ablationlab-slurm-cli-")
    up = subprocess.run([*script, "up", "--dir", str(first)], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export SLURM_CONF={first}/slurm.conf"
        cluster = cluster_mod.Cluster.load(first)
        assert cluster.startup_seconds > 0 and all(_daemons_alive(cluster).values())
        assert set(cluster.run("sinfo", "--noheader", "--format=%T").stdout.split()) == {"idle"}
        assert cluster_mod._system_conf_owner() == first

        refused = subprocess.run([*script, "up", "--dir", str(second)], capture_output=True, text=True, timeout=180)
        assert refused.returncode == 1
        assert f"another test cluster ({first}) is running" in refused.stderr
        assert f"cluster.py down --dir {first}" in refused.stderr
        assert not second.exists()  # a failed `up` cleans up after itself
    finally:
        down = subprocess.run([*script, "down", "--dir", str(first)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not first.exists()
    assert not any(_daemons_alive(cluster).values())  # `cluster` was loaded from disk: checked by command line
    assert (cluster_mod.SYSTEM_CONF.read_bytes() if cluster_mod.SYSTEM_CONF.exists() else None) == system_conf_before


def _daemons_alive(cluster) -> dict[str, bool]:
    return {name: cluster._ours(name, pid) for name, pid in cluster.pids.items()}


def test_cluster_runs_and_cancels_batch_jobs(slurm, tmp_path):
    assert all(_daemons_alive(slurm).values()) and set(slurm.pids) == {"munged", "slurmctld", "slurmd"}
    node = slurm.run("sinfo", "--noheader", "--Node", "--format=%N %T %c").stdout.splitlines()[0].split()
    assert node[0] == slurm.node and node[2] == str(len(os.sched_getaffinity(0)))

    # a job step inside a batch job finds the cluster without SLURM_CONF (snakemake's jobstep drops it)
    out = tmp_path / "job.out"
    job = slurm.run(
        "sbatch",
        "--parsable",
        f"--output={out}",
        "--wrap",
        "echo job=$SLURM_JOB_ID on $(env -u SLURM_CONF srun --ntasks=1 hostname -s)",
        cwd=tmp_path,
    ).stdout.strip()
    assert slurm.wait_job(job) == "COMPLETED", out.read_text() if out.exists() else slurm.logs()
    assert out.read_text().strip() == f"job={job} on {slurm.node}"
    assert slurm.jobs()[job] == "COMPLETED"  # MinJobAge keeps it visible to `squeue` (snakemake's status command)

    marker, sleeper = tmp_path / "started", f"sleep {300 + os.getpid() % 1000}.5"
    long = slurm.run(
        "sbatch", "--parsable", "--output=/dev/null", "--wrap", f"touch {marker}; exec {sleeper}", cwd=tmp_path
    ).stdout.strip()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), slurm.logs()
    slurm.run("scancel", long)
    assert slurm.wait_job(long) == "CANCELLED"
    deadline = time.monotonic() + 10  # KillWait=2: SIGTERM, then SIGKILL
    while sleeper in _processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sleeper not in _processes()


def _processes() -> list[str]:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()


# --------------------------------------------------------------------------- the study on SLURM

SMOKE = "presets/smoke.yaml"
# two seeds, trained by one job per experiment (train + evaluate); the GPU group has two experiments, so
# its train_<group> rule has several jobs (an array); it asks for a GPU (device stays cpu: it trains on the
# CPU) and goes to the GPU partition, the others ask for none
GPU_GROUP, GPU_PARTITION = "dropout", "gpu"
OVERLAY = "slurm-test.yaml"
OVERLAY_CONFIG = {
    "seeds": [0, 1],
    "resources": {GPU_GROUP: {"gpu": 1}},
    "ablations": [
        {"id": "batch_norm", "title": "Batch normalisation", "variants": {"bn": {"model": {"batch_norm": True}}}},
        {"id": GPU_GROUP, "title": "Dropout", "sweep": {"key": "model.dropout", "label": "p", "values": [0.3, 0.5]}},
    ],
}
# the sbatch calls of the train rules when every experiment's job is ready at once: one array for the group
# of two experiments, a plain sbatch for the others
ARRAYS = {"train_baseline": [None], "train_batch_norm": [None], f"train_{GPU_GROUP}": ["1-2"]}
CONFIGS = ["--configfile", SMOKE, OVERLAY]
TO_GPU_PARTITION = ["--set-resources", f"train_{GPU_GROUP}:slurm_partition={GPU_PARTITION}"]
# test-only: poll squeue every 2 s (not 40 s) and keep the sbatch logs of successful jobs as evidence
FAST_POLL = [
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "2",
    "--slurm-keep-successful-logs",
]
PROFILE = ["--profile", "profiles/slurm", *FAST_POLL, *TO_GPU_PARTITION]
JOB_BLOCK = re.compile(r"^(local)?(?:rule|checkpoint) (\S+):\n((?:    .*\n)+)", re.M)
SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", re.M)
SUBMITTED_ARRAY = re.compile(
    r"^Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. "
    r"The individual task IDs are (\d+)-(\d+)\.$",
    re.M,
)
PASS = re.compile(r"^Execute \d+ jobs\.\.\.$", re.M)
COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # not the timing columns


def _copy_repo(dest: Path) -> Path:
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "results", "reports", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache", "data"
        ),
    )
    (dest / OVERLAY).write_text(yaml.safe_dump(OVERLAY_CONFIG))
    return dest


class Snakemake:
    """``python -m snakemake ARGS`` in a work dir (background), its output in a log file, its sbatch calls
    (through the ``sbatch_wrapper``) in another."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str], name: str):
        self.workdir, self.log = workdir, workdir / f"snakemake-{name}.out"
        self.sbatch_log = workdir / f"sbatch-{name}.jsonl"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snakemake", *args],
                cwd=workdir,
                env=dict(env, ABLATIONLAB_SBATCH_LOG=str(self.sbatch_log)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float = 1800, ok: bool = True) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
            pytest.fail(f"snakemake in {self.workdir} ran over {timeout} s:\n{self.text()[-4000:]}")
        if ok:
            assert self.proc.returncode == 0, self.text()[-6000:]
        return self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def submissions(self) -> list[dict]:
        """Every sbatch call: the rule it submits (from --comment), --array, partition, --gpus."""
        if not self.sbatch_log.exists():
            return []
        return [_submission(json.loads(line)) for line in self.sbatch_log.read_text().splitlines()]


def _submission(argv: list[str]) -> dict:
    options = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        options[name] = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    rule = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", options["--comment"]).group(1)
    return {
        "rule": rule,
        "array": options.get("--array"),
        "gpus": options.get("--gpus"),
        "partition": options.get("-p", options.get("--partition")),
    }


def _env(cluster, wrapper: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # jobs call `python -m ablationlab`
    return dict(cluster.env, PATH=os.pathsep.join([str(wrapper), venv_bin, os.environ.get("PATH", "")]))


def _jobs(log: str) -> list[dict]:
    """Every job of a Snakemake log: rule, local or not, wildcards, its SLURM job id when submitted
    (``<array>_<task>`` for an array task) and the scheduling pass that selected it."""
    submitted = {m.group(1): m.group(2) for m in SUBMITTED.finditer(log)}
    for m in SUBMITTED_ARRAY.finditer(log):
        first = int(m.group(3))
        submitted |= {jid: f"{m.group(2)}_{first + k}" for k, jid in enumerate(m.group(1).split(","))}
    passes = [p.start() for p in PASS.finditer(log)]
    jobs = []
    for m in JOB_BLOCK.finditer(log):
        fields = dict(line.strip().split(": ", 1) for line in m.group(3).splitlines() if ": " in line)
        wildcards = dict(w.split("=", 1) for w in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        jobs.append(
            {
                "rule": m.group(2),
                "local": bool(m.group(1)),
                "wildcards": wildcards,
                "slurm": submitted.get(fields["jobid"]),
                "pass": sum(p < m.start() for p in passes),
            }
        )
    return jobs


def _check_submitted(cluster, jobs: list[dict]) -> list[dict]:
    """Every non-local job went through sbatch and COMPLETED there; returns those jobs."""
    remote = [j for j in jobs if not j["local"]]
    assert remote, "no job was submitted to SLURM"
    assert all(j["slurm"] for j in remote), [j for j in remote if not j["slurm"]]
    assert not any(j["slurm"] for j in jobs if j["local"])
    states = cluster.jobs()
    assert {j["slurm"]: states.get(j["slurm"]) for j in remote} == {j["slurm"]: "COMPLETED" for j in remote}
    return remote


def _check_arrays(remote: list[dict], calls: list[dict]) -> dict[str, int]:
    """The jobs of one rule that one scheduling pass selected went to SLURM in one sbatch (an array when
    several, plain when one): sbatch calls per rule == passes with jobs of that rule. Returns the calls
    per rule."""
    by_pass = collections.Counter((j["rule"], j["pass"]) for j in remote)
    calls_per_rule = collections.Counter(c["rule"] for c in calls)
    assert calls_per_rule == collections.Counter(rule for rule, _ in by_pass), (calls, by_pass)
    for call in calls:
        sizes = [n for (rule, _), n in by_pass.items() if rule == call["rule"]]
        assert call["array"] is None or call["array"] in {f"1-{n}" for n in sizes if n > 1}, (call, by_pass)
    arrays = {j["slurm"].split("_")[0] for j in remote if "_" in j["slurm"]}
    assert len(arrays) == sum(c["array"] is not None for c in calls)
    return dict(calls_per_rule)


def _runs(workdir: Path) -> list[Path]:
    return sorted(p.parent for p in (workdir / "results" / "runs").glob("**/seed*/metrics.json"))


def _same_run(a: Path, b: Path) -> None:
    """Identical content: test metrics, the training history (bar timings), the trained weights."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert (ma["test_acc"], ma["test_loss"]) == (mb["test_acc"], mb["test_loss"]), (a, b)
    ha, hb = (pd.read_csv(d / "history.csv")[COMPARED] for d in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    wa, wb = (torch.load(d / "weights.pt", weights_only=True) for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)


def _mlflow_children(workdir: Path) -> dict[tuple[str, str], float]:
    """{(experiment, seed): test_acc} of the current (not superseded) per-seed MLflow runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((workdir / SMOKE).read_text())["study"]["name"])
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'child' and tags.superseded = 'false'")
    children = {(r.data.tags["experiment"], r.data.tags["seed"]): r.data.metrics["test_acc"] for r in runs}
    assert len(children) == len(runs), "duplicate MLflow runs"
    return children


def _fingerprint(run_dirs: list[Path]) -> dict[str, tuple[int, bytes]]:
    return {str(f): (f.stat().st_mtime_ns, f.read_bytes()) for d in run_dirs for f in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def smoke_on_slurm(slurm, sbatch_wrapper, tmp_path_factory):
    """The smoke study run once through ``--profile profiles/slurm`` and once locally (same seeds), side by side."""
    base = tmp_path_factory.mktemp("smoke")
    on_slurm, local = _copy_repo(base / "slurm"), _copy_repo(base / "local")
    env = _env(slurm, sbatch_wrapper)
    groups = ["baseline"] + [g["id"] for g in yaml.safe_load((REPO / SMOKE).read_text())["ablations"]]
    reference = Snakemake(local, ["--cores", "1", *CONFIGS, "--", *groups], env, "local")
    start = time.monotonic()
    run = Snakemake(on_slurm, [*PROFILE, *CONFIGS], env, "slurm")
    log = run.wait()
    print(f"\nsmoke study on SLURM: {time.monotonic() - start:.0f} s", file=sys.stderr)
    reference.wait()
    assert not reference.submissions()
    return {"slurm": on_slurm, "local": local, "log": log, "env": env, "calls": run.submissions()}


def test_smoke_study_on_slurm_equals_local_run(slurm, smoke_on_slurm):
    remote = _check_submitted(slurm, _jobs(smoke_on_slurm["log"]))
    calls = smoke_on_slurm["calls"]
    per_rule = _check_arrays(remote, calls)
    print(f"\nsbatch calls: {len(calls)} for {len(remote)} jobs: {per_rule}", file=sys.stderr)
    groups = {j["rule"].split("_", 1)[1] for j in remote if j["rule"].startswith("train_")}
    assert len(groups) == 3
    for group in groups:  # all trainings are ready together (after prepare_data): one sbatch per group
        rule = f"train_{group}"
        assert [c["array"] for c in calls if c["rule"] == rule] == ARRAYS[rule], calls
    assert len(calls) < len(remote)
    for job in remote:  # the sbatch log of each job (kept) is where SLURM wrote it
        assert list((smoke_on_slurm["slurm"] / "results" / "logs" / "slurm").glob(f"**/{job['slurm']}.log")), job

    on_slurm, local = _runs(smoke_on_slurm["slurm"]), _runs(smoke_on_slurm["local"])
    names = [p.relative_to(smoke_on_slurm["slurm"]) for p in on_slurm]
    assert names and names == [p.relative_to(smoke_on_slurm["local"]) for p in local]
    experiments = json.loads((smoke_on_slurm["slurm"] / "results/study/experiments.json").read_text())
    assert len(experiments["seeds"]) == 2
    assert len(names) == len(experiments["experiments"]) * len(experiments["seeds"])
    for a, b in zip(on_slurm, local):
        _same_run(a, b)

    tracked = _mlflow_children(smoke_on_slurm["slurm"])
    assert tracked == {
        (e["id"], str(s)): json.loads(
            (smoke_on_slurm["slurm"] / "results/runs" / e["id"] / f"seed{s}/metrics.json").read_text()
        )["test_acc"]
        for e in experiments["experiments"]
        for s in experiments["seeds"]
    }


def test_gpu_group_gets_slurm_gpus_in_its_partition(slurm, smoke_on_slurm):
    """The GPU group's train jobs (which also evaluate) ask sbatch for a GPU in the GPU partition, SLURM
    allocates one of the fake GPUs and sets CUDA_VISIBLE_DEVICES (gpu_slot.py writes it to the job's log);
    the CPU groups ask for none, in the default partition."""
    workdir, calls = smoke_on_slurm["slurm"], smoke_on_slurm["calls"]
    gpu_rules = {f"train_{GPU_GROUP}"}
    assert gpu_rules <= {c["rule"] for c in calls}
    for call in calls:
        on_gpu = call["rule"] in gpu_rules
        assert (call["gpus"], call["partition"] == GPU_PARTITION) == (("1", True) if on_gpu else (None, False)), call
    remote = [j for j in _jobs(smoke_on_slurm["log"]) if not j["local"]]
    for job in remote:  # SLURM's own record of each job (MinJobAge keeps finished jobs)
        shown = slurm.run("scontrol", "show", "job", job["slurm"]).stdout
        on_gpu = job["rule"] in gpu_rules
        assert (f"Partition={GPU_PARTITION}" in shown, "TresPerJob=gres:gpu:1" in shown) == (on_gpu, on_gpu), shown
    logs = {
        p.relative_to(workdir / "results/logs/train"): p.read_text()  # the jobs' own logs
        for p in (workdir / "results/logs/train").glob("**/seed*.log")
    }
    assert len(logs) == 4 and {p.parts[0] for p in logs} == {"baseline", "batch_norm", GPU_GROUP}  # one per job
    assert {p.name for p in logs} == {"seed0-1.log"}  # every job trained both seeds
    for path, log in logs.items():
        if path.parts[0] == GPU_GROUP:
            assert re.search(r"^gpu_slot: CUDA_VISIBLE_DEVICES=[01] \(set by the scheduler\)$", log, re.M), log
        else:
            assert "CUDA_VISIBLE_DEVICES" not in log, log


def test_changed_variant_resubmits_only_its_jobs(slurm, smoke_on_slurm):
    workdir = smoke_on_slurm["slurm"]
    config = yaml.safe_load((workdir / OVERLAY).read_text())  # its ablations replace the preset's
    group = config["ablations"][0]
    variant = next(iter(group["variants"]))
    group["variants"][variant] = {**group["variants"][variant], "optimizer": {"lr": 0.1}}
    (workdir / OVERLAY).write_text(yaml.safe_dump(config, sort_keys=False))
    changed = f"{group['id']}/{variant}"
    others = [d for d in _runs(workdir) if d.parent.relative_to(workdir / "results" / "runs").as_posix() != changed]
    before = _fingerprint(others)

    run = Snakemake(workdir, [*PROFILE, *CONFIGS], smoke_on_slurm["env"], "changed")
    jobs = _jobs(run.wait())
    remote = _check_submitted(slurm, jobs)
    _check_arrays(remote, run.submissions())
    assert {j["wildcards"]["experiment"] for j in jobs if "experiment" in j["wildcards"]} == {changed}
    train = [j for j in remote if j["rule"].startswith("train_")]
    assert [(j["rule"], j["wildcards"]["experiment"]) for j in train] == [(f"train_{group['id']}", changed)]
    assert [c["array"] for c in run.submissions() if c["rule"].startswith("train_")] == [None]  # one job: both seeds
    assert _fingerprint(others) == before  # the other experiments' runs were not touched
    recipe = json.loads((workdir / "results/runs" / changed / "seed0" / "recipe.json").read_text())
    assert recipe["optimizer"]["lr"] == 0.1
    tracked = _mlflow_children(workdir)
    assert (
        tracked[(changed, "0")]
        == json.loads((workdir / "results/runs" / changed / "seed0/metrics.json").read_text())["test_acc"]
    )
    assert len(tracked) == len(_runs(workdir))


def test_evaluation_change_resubmits_each_train_rule_as_one_array(slurm, smoke_on_slurm):
    """Edited evaluation code re-runs every train job (they evaluate), which resumes its runs at their last
    epoch: each train_<group> rule goes to SLURM in one sbatch, an array for the group of two experiments
    (GPU group: in its partition, with a GPU)."""
    workdir = smoke_on_slurm["slurm"]
    metrics = {d: (d / "metrics.json").read_text() for d in _runs(workdir)}
    with open(workdir / "src/ablationlab/evaluate.py", "a") as code:
        code.write("\n# edited\n")
    groups = sorted({d.relative_to(workdir / "results/runs").parts[0] for d in metrics})
    run = Snakemake(workdir, [*PROFILE, *CONFIGS, "--", *groups], smoke_on_slurm["env"], "evaluate")
    remote = _check_submitted(slurm, _jobs(run.wait()))
    assert sorted(j["rule"] for j in remote) == sorted(
        ["train_baseline", "train_batch_norm", *[f"train_{GPU_GROUP}"] * 2]
    )
    calls = run.submissions()
    assert sorted((c["rule"], c["array"]) for c in calls) == [(r, a) for r, [a] in sorted(ARRAYS.items())]
    assert [(c["gpus"], c["partition"]) for c in calls if c["rule"] == f"train_{GPU_GROUP}"] == [("1", GPU_PARTITION)]
    for log in (workdir / "results/logs/train").glob("**/seed*.log"):
        assert "resuming from epoch" in log.read_text(), log  # trained nothing again
    assert {d: (d / "metrics.json").read_text() for d in _runs(workdir)} == metrics  # same results again


def test_scancel_mid_training_resumes_from_checkpoint(slurm, smoke_on_slurm):
    """Both seeds of the baseline train in one job, one after the other; the job, killed by scancel after
    seed 0's first checkpoint, resumes seed 0 there on the re-run (not at epoch 0) and ends with the histories
    and weights of an uninterrupted run."""
    workdir, local, env = smoke_on_slurm["slurm"], smoke_on_slurm["local"], smoke_on_slurm["env"]
    epochs = 150  # ~0.05 s each: time to scancel after the first checkpoint, even on an idle machine
    for d in (workdir, local):
        (d / "long.yaml").write_text(f"baseline:\n  epochs: {epochs}\n")
        shutil.rmtree(d / "results/checkpoints/baseline", ignore_errors=True)  # those of the 1-epoch runs
    targets = [f"results/runs/baseline/seed{s}/history.csv" for s in (0, 1)]
    killed = Snakemake(workdir, [*PROFILE, "--retries", "0", *CONFIGS, "long.yaml", "--", *targets], env, "killed")
    reference = Snakemake(local, ["--cores", "1", *CONFIGS, "long.yaml", "--", *targets], env, "long-local")
    checkpoint = workdir / "results/checkpoints/baseline/seed0/last.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and killed.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), killed.text()[-4000:]
    [job] = [j for j in _jobs(killed.text()) if j["rule"] == "train_baseline"]
    slurm.run("scancel", job["slurm"])
    log = killed.wait(ok=False)
    assert killed.proc.returncode != 0
    assert f"SLURM-job '{job['slurm']}' failed, SLURM status is: 'CANCELLED'" in log
    assert not (workdir / targets[0]).exists(), f"all {epochs} epochs were done before scancel landed"
    assert checkpoint.exists()

    log = Snakemake(
        workdir, [*PROFILE, "--rerun-incomplete", *CONFIGS, "long.yaml", "--", *targets], env, "resumed"
    ).wait()
    assert [j["rule"] for j in _check_submitted(slurm, _jobs(log)) if j["rule"] == "train_baseline"] == [
        "train_baseline"
    ]
    assert all((workdir / t).exists() for t in targets)
    resumed = re.search(r"resuming from epoch (\d+)", (workdir / "results/logs/train/baseline/seed0-1.log").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < epochs, "the re-run did not resume from the checkpoint"
    reference.wait()
    for seed in (0, 1):
        run, ref = (d / f"results/runs/baseline/seed{seed}" for d in (workdir, local))
        ha, hb = (pd.read_csv(d / "history.csv")[COMPARED] for d in (run, ref))
        assert len(ha) == epochs
        pd.testing.assert_frame_equal(ha, hb, check_exact=True)
        wa, wb = (torch.load(d / "weights.pt", weights_only=True) for d in (run, ref))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
