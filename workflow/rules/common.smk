"""Shared helpers: the validated study, paths, the final targets, per-group resources,
MLflow settings, library inputs.

Included first by the Snakefile. The configuration is validated and resolved here by
ablationlab.study (schema src/ablationlab/schemas/config.schema.yaml, defaults filled in, plus the
semantic checks); an invalid configuration stops Snakemake with one readable message
naming the key path, before any job is planned. The rule files use what this file defines,
never each other's names.

Parsing changes nothing and prints nothing (snakemake -n, --lint and --report are safe):
what must act before the jobs (the checks of PREFLIGHT, messages) runs in onstart, when jobs run.
"""

import contextlib
import functools
import math
import os
import re
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SRC = Path(workflow.basedir) / "src"
if (SRC / "ablationlab").is_dir():
    # this file and every job (conda envs included) import the repository's library
    sys.path.insert(0, str(SRC))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p
    )


envvars:
    "PYTHONPATH",


import ablationlab
from ablationlab import data as abl_data
from ablationlab import defaults as abl_defaults
from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab.layout import (
    CHECKPOINTS_ROOT,
    DATA_FILES,
    EVALUATE_FILES,
    FIGURE_MANIFEST,
    MLFLOW_INFO,
    MLFLOW_RECORD,
    RENDERED,
    REPORT_HTML,
    REPORT_PDF,
    RUNS_ROOT,
    SEED_PLAN,
    STUDY_REPORT,
    STUDY_TABLE,
    SUMMARY,
    TRAIN_BENCHMARKS,
    TRAIN_FILES,
    TRAIN_LOGS,
    job_stem,
    seed_blocks as abl_seed_blocks,
)
from ablationlab import mlflow_store as abl_mlflow
from ablationlab import stages as abl_stages
from ablationlab import study as abl_study
from ablationlab import tracking as abl_tracking

LIB = Path(ablationlab.__file__).resolve().parent
with contextlib.suppress(ValueError):
    LIB = LIB.relative_to(Path.cwd().resolve())

# the library's packaged schema: one file for both checks
SCHEMA = abl_defaults.SCHEMA_PATH
ENV = "../envs/ablationlab.yaml"

try:
    STUDY = abl_study.load(config, SCHEMA)
except abl_study.ConfigError as err:
    # one problem is "<key path>: ...", several come listed under their own "invalid configuration:"
    text = str(err)
    if not text.startswith("invalid configuration:"):
        text = f"invalid configuration: {text}"
    raise WorkflowError(text) from None
# the same schema through Snakemake (fills the same defaults into `config`; cannot fail now)
validate(config, SCHEMA)

CONFIG = STUDY.config
STUDY_NAME = CONFIG["study"]["name"]
DATASET = CONFIG["data"]["dataset"]
SEEDS = CONFIG["seeds"]
EXPERIMENTS = {e["id"]: e for e in STUDY.experiments["experiments"]}
GROUPS = ["baseline"] + [g["id"] for g in STUDY.report["groups"]]
GROUP_EXPERIMENTS = {
    gid: [e for e in EXPERIMENTS if EXPERIMENTS[e]["group"] == gid] for gid in GROUPS
}


# Files between the stages (ablationlab.layout), not as rules.<rule>.output: Snakemake hashes a
# list input whole for every file of it when a rule references another rule's output, seconds of
# planning for a large study (benchmarks/plan_study.py). A job gets the folder of its inputs or
# outputs as input_folder()/output_folder() params, and a root of many (RUNS_ROOT) as a constant.
def data_options():
    """Options of `prepare` that change the prepared tensors (params of prepare_data)."""
    data = CONFIG["data"]
    options = [
        "--val-size",
        str(data["val_size"]),
        "--split-seed",
        str(data["split_seed"]),
    ]
    if data["image_size"] is not None:
        options += ["--image-size", str(data["image_size"])]
    if data["dataset"] == "imagefolder":
        options += ["--root", data["root"]]
    return options


def data_source():
    """Where raw files come from (checksum-verified, so they do not change the data)."""
    data = CONFIG["data"]
    options = ["--root", data["root"]] if data["dataset"] != "imagefolder" else []
    if data["mirror"]:
        options += ["--mirror", data["mirror"]]
    return options


# The prepared data's folder is named after what decides its tensors (ablationlab.layout.data_key):
# the prepare options and the code that both writes and reads them (data.py, io.py:
# ablationlab.stages.shared_code). A change of either is another folder, so every job that reads
# the data is planned again by its missing input, a dry run included; the folders of other keys
# are removed when a run prepares this one (prune_data).
DATA_CODE = abl_stages.shared_code("prepare", ("train", "figures"), LIB)
DATA_DIR = abl_layout.data_dir(DATASET, abl_layout.data_key(data_options(), DATA_CODE))


# A prepared cache whose tensors no longer match their sha256 is rebuilt in this very run (a dry
# run plans it) without parsing changing a file: prepare_data then has one more output, an empty
# marker named after this corrupted state (DATA_REBUILD), which the targets ask for with the
# `verified` marker (DATA_VERIFIED): missing, so the job runs. Nothing Snakemake records (params,
# the input set) changes, so the healthy cache re-runs nothing once more; the data files stay
# ancient() inputs, so identical rebuilt data re-runs nothing else. The main process checks
# (sha256 of the cache); a job on a cluster, which parses the workflow too, gets the marker's
# name through the environment.
def rebuild_name(problem):
    """`rebuild-<digest>` of the cache's corrupted state: the problem, its files' sizes and mtimes."""
    files = [Path(DATA_DIR, name) for name in DATA_FILES + ["meta.json"]]
    state = [problem] + [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()
    ]
    digest = hashlib.sha256(abl_io.canonical_json(state).encode()).hexdigest()
    return f"rebuild-{digest[:12]}"


REBUILD_VAR = (
    "ABLATIONLAB_DATA_REBUILD"  # optional: registered only when set (not in envvars:)
)
if workflow.is_main_process:
    DATA_PROBLEM = abl_data.corruption(DATA_DIR)
    DATA_REBUILD = rebuild_name(DATA_PROBLEM) if DATA_PROBLEM else ""
    if DATA_REBUILD:
        os.environ[REBUILD_VAR] = DATA_REBUILD
        workflow.register_envvars(REBUILD_VAR)
else:
    DATA_PROBLEM, DATA_REBUILD = None, os.environ.get(REBUILD_VAR, "")
# what `all` and the group targets ask for: prepare_data's marker (and its rebuild, see above)
DATA_VERIFIED = [f"{DATA_DIR}/verified"] + (
    [f"{DATA_DIR}/{DATA_REBUILD}"] if DATA_REBUILD else []
)

# the script that gives each job its own GPU(s) (see its docstring)
GPU_SLOT = os.path.relpath(Path(workflow.basedir, "workflow", "scripts", "gpu_slot.py"))


def verbatim(value):
    """A params value passed on as is: Snakemake formats plain string params as wildcard
    patterns, so config text ({word}, LaTeX braces) must reach params through a function.
    """
    return lambda wildcards: value


# --------------------------------------------------------------------------- MLflow

# Credentials in tracking.uri (https://user:pass@host) never reach a shell command or a log:
# they are moved into MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD environment variables
# (inherited by local jobs, exported by sbatch) and jobs get the bare URI.
MLFLOW_URI = abl_mlflow.export_credentials(CONFIG["tracking"]["uri"])
# credentials given: pass them on to remote jobs (sbatch exports them anyway)
if MLFLOW_URI != CONFIG["tracking"]["uri"]:
    workflow.register_envvars("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# the MLflow experiment of the study (config key tracking.experiment, default the study name)
MLFLOW_EXPERIMENT = CONFIG["tracking"]["experiment"] or STUDY_NAME
TRACK_RULES = {"track"}  # the rules that talk to the tracking store (track.smk)


def live_tracking(wildcards):
    """`train --track` value of an experiment's jobs (tracking.live / system_metrics): a
    LiveSpec, which Snakemake does not compare between runs, so switching live logging or the
    tracking server re-trains nothing."""
    return abl_tracking.LiveSpec(
        uri=MLFLOW_URI,
        mlflow_experiment=MLFLOW_EXPERIMENT,
        study=STUDY_NAME,
        experiment=wildcards.experiment,
        group=EXPERIMENTS[wildcards.experiment]["group"],
        dataset=DATASET,
        live=CONFIG["tracking"]["live"],
        system_metrics=CONFIG["tracking"]["system_metrics"],
    )


# --------------------------------------------------------------------------- before the jobs

# checks before the first job (not on -n, nor when nothing is to be done): each gets the jobs
# to run and returns an error line or None. A folder the run writes into that is read-only or
# immutable: Snakemake would fail removing old outputs with a traceback (it names
# write-protected files itself). An unreachable tracking server: one line before the first
# job, not minutes of retries per job.
PREFLIGHT = [
    lambda jobs: abl_io.unwritable(f for job in jobs for f in [*job.output, *job.log]),
    lambda jobs: (
        abl_mlflow.server_problem(MLFLOW_URI)
        if any(job.rule.name in TRACK_RULES for job in jobs)
        else None
    ),
]


def notices():
    """What a run (not -n) says before its first job."""
    if DATA_PROBLEM:
        yield f"warning: {DATA_PROBLEM}: prepare_data rebuilds it"
    if not workflow.non_local_exec and gpu_slots_per_gpu() > 1:
        yield (
            f"GPU sharing (resources.<group>.jobs_per_gpu): --resources gpu= counts GPU slots,"
            f" {gpu_slots_per_gpu()} per GPU (cap with gpu=<GPUs x {gpu_slots_per_gpu()}>)"
        )


def prune_data(jobs):
    """Remove the dataset's prepared folders of other options or code when ``jobs`` prepare this one."""
    if any(job.rule.name == "prepare_data" for job in jobs):
        for stale in abl_layout.stale_data_dirs(DATA_DIR):
            shutil.rmtree(stale)
            print(
                f"removed {stale}: prepared for other data options or code",
                file=sys.stderr,
            )


onstart:
    for line in notices():
        print(line, file=sys.stderr)
    jobs = list(workflow.dag.needrun_jobs())
    for check in PREFLIGHT:
        if problem := check(jobs):
            raise WorkflowError(problem)
    prune_data(jobs)


# An image folder can change while the config does not: then prepare_data is a checkpoint
# that the jobs reading its files wait for, and they are planned again once it has run, with
# the digest of the content they read as a param. Other datasets are checksum-verified (or
# bundled): their content follows from the prepare options, which are then the param, with
# no re-planning (it doubles the planning time of a large study: benchmarks/plan_study.py).
TRACK_CONTENT = DATASET == "imagefolder"


def after_data(files):
    """``files`` (a list, or an input function) as an input function that waits for prepare_data
    when TRACK_CONTENT: the job is planned again once the data are prepared. The jobs after the
    train jobs need it too, not only those that read the data: once a checkpoint has run,
    Snakemake 9 plans afresh only the jobs that waited for it and keeps, for every other job, the
    reasons to run it found before (a touched image re-ran summarize and everything after it).
    """
    if not TRACK_CONTENT:
        return files

    def prepared(wildcards):
        checkpoints.prepare_data.get()
        return files(wildcards) if callable(files) else files

    return prepared


def data_files(names):
    """Prepared data files (after_data). ancient(): re-prepared identical data re-runs nothing
    (data_version decides)."""
    return after_data(ancient(expand(f"{DATA_DIR}/{{name}}", name=names)))


@functools.lru_cache(maxsize=None)
def _data_digest(splits, stat):
    try:
        return abl_data.data_digest(abl_data.load_meta(DATA_DIR), splits)
    except (abl_data.DataError, OSError):
        return "unreadable"  # differs from any recorded digest: the job re-runs


def data_version(*splits):
    """Param of the jobs reading the prepared data: what decides the content that readers
    of ``splits`` see. The prepare options, or for an image folder the content digest
    (abl_data.data_digest), read once prepare_data has run. A change re-runs the job."""
    if not TRACK_CONTENT:
        return verbatim(data_options())

    def digest(wildcards):
        # raises while prepare_data is pending: Snakemake asks again once it has run
        checkpoints.prepare_data.get()
        st = Path(DATA_DIR, "meta.json").stat()
        return _data_digest(splits, (st.st_mtime_ns, st.st_size, st.st_ino))

    return digest


def folder_manifest():
    """The image folder's listing digest (abl_data.folder_manifest; "" for other datasets),
    a param of prepare_data: adding, removing or overwriting an image re-prepares the data.
    Stat only, by the main process only (jobs do not compare params): 0.3 s for 50 000 files.
    """
    if DATASET != "imagefolder" or not workflow.is_main_process:
        return ""
    try:
        return abl_data.folder_manifest(CONFIG["data"]["root"])
    except abl_data.DataError as err:
        raise WorkflowError(f"data.root: {err}") from None


FOLDER_MANIFEST = folder_manifest()


def _weights(wildcards):
    weights = EXPERIMENTS[wildcards.experiment]["recipe"]["model"]["weights"]
    return [] if weights in abl_study.NAMED_WEIGHTS else [weights]


def weights_file(wildcards):
    """A weights file named in the recipe is an input, ancient(): its content decides
    (weights_digest), so a touched file re-trains nothing and one replaced by an older file
    (cp -p) re-trains."""
    return ancient(_weights(wildcards))


@functools.lru_cache(maxsize=None)
def _file_sha256(path, mtime_ns, size):
    return abl_io.sha256(path)


def weights_digest(wildcards):
    """Param: sha256 of the experiment's weights file (none for named weights)."""
    stats = {w: os.stat(w) for w in _weights(wildcards)}
    return [_file_sha256(w, st.st_mtime_ns, st.st_size) for w, st in stats.items()]


# adaptive seeding (adaptive.smk): each experiment's seeds come from the last look
ADAPTIVE = "adaptive" in STUDY.experiments


def seed_blocks():
    """The blocks of seeds one train job trains: the study's seeds, then each block that adaptive
    seeding may add (ablationlab.layout.seed_blocks)."""
    return abl_seed_blocks(SEEDS, STUDY.experiments.get("adaptive"))


def train_jobs(exp):
    """The file stems of the train jobs of experiment `exp`: one per block of its seeds."""
    seeds = set(experiment_seeds(exp))
    return [job_stem(b) for b in seed_blocks() if set(b) <= seeds]


def experiment_seeds(exp):
    """The seeds experiment `exp` gets: the study's, or with adaptive seeding those of the
    last look (a checkpoint: call it from input functions only)."""
    return adaptive_plan()["seeds"][exp] if ADAPTIVE else SEEDS


def run_files(experiments, names, seeds=None):
    """results/runs/<experiment>/seed<n>/<name> for every experiment, its seeds (or `seeds`) and name."""
    return [
        abl_layout.run_path(exp, seed, name)
        for exp in experiments
        for seed in (experiment_seeds(exp) if seeds is None else seeds)
        for name in names
    ]


look_file = abl_layout.look_path


@functools.lru_cache(maxsize=None)
def _read_look(path, mtime_ns):
    return abl_io.read_json(path)


def read_look(k):
    """The result of look k (IncompleteCheckpointException until that checkpoint has run)."""
    path = checkpoints.adaptive_look.get(look=k).output[0]
    return _read_look(path, os.stat(path).st_mtime_ns)


def look_seeds(k):
    """{experiment: seeds} tested at look k: the study's at look 1, else what look k-1 decided."""
    return {e: SEEDS for e in EXPERIMENTS} if k == 1 else read_look(k - 1)["seeds"]


def adaptive_plan():
    """The last look's result: the first look that added no seed."""
    # every look but the last adds a seed somewhere, so there are at most this many
    limit = len(EXPERIMENTS) * STUDY.experiments["adaptive"]["max_seeds"] + 1
    for k in range(1, limit + 1):
        result = read_look(k)
        if result["done"]:
            return result
    raise WorkflowError(f"adaptive seeding: no decision after {limit} looks")


def look_runs(wildcards):
    seeds = look_seeds(int(wildcards.look))
    return [
        abl_layout.run_path(e, s, name)
        for e in EXPERIMENTS
        for s in seeds[e]
        for name in abl_layout.ADAPTIVE_READS
    ]


def previous_look(wildcards):
    k = int(wildcards.look)
    return [look_file(k - 1)] if k > 1 else []


def seed_plan_option(wildcards, input):
    """`--seeds results/adaptive/seeds.json` for the aggregating stages (adaptive seeding only)."""
    return ["--seeds", *input.seeds] if ADAPTIVE else []


def final_targets():
    """What the Snakefile's default target asks for: every stage's final files for this study."""
    return [
        *DATA_VERIFIED,
        STUDY_TABLE,
        STUDY_REPORT,
        # the study's seeds (adaptive seeding adds its further seeds through the summary)
        *run_files(EXPERIMENTS, EVALUATE_FILES[:1], SEEDS),
        *SUMMARY,
        *([SEED_PLAN] if ADAPTIVE else []),
        MLFLOW_INFO,
        MLFLOW_RECORD,
        *expand(RENDERED, ext=["html", "pdf"]),
        REPORT_HTML,
        REPORT_PDF,
    ]


def _one_folder(files, name):
    folders = {
        os.path.dirname(f) for f in ([files] if isinstance(files, str) else files)
    }
    if len(folders) != 1:
        raise WorkflowError(f"{name}: files in {len(folders)} folders, expected one")
    return folders.pop()


def input_folder(name):
    """Param: the one folder of the job's input files `name`, whichever file comes first.
    Derived from the input and not a constant: Snakemake rewrites input paths under remote
    storage (and lints a param that hardcodes an input's folder); not compared between runs
    (the files are)."""
    return lambda wildcards, input: _one_folder(input[name], name)


def output_folder(name):
    """Param: the one folder of the job's output files `name` (as input_folder)."""
    return lambda wildcards, output: _one_folder(output[name], name)


def experiment_regex(experiments):
    """A wildcard constraint matching exactly these experiment ids."""
    return "|".join(re.escape(e) for e in experiments)


def recipe_json(wildcards):
    """The experiment's fully resolved recipe, canonical JSON (params: a change re-runs it)."""
    return abl_io.canonical_json(EXPERIMENTS[wildcards.experiment]["recipe"])


# --------------------------------------------------------------------------- resources


def _group_resources(group):
    merged = dict(CONFIG["resources"].get("default") or {})
    overrides = CONFIG["resources"].get(group) or {}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return merged


def group_resource(group, key, fallback):
    """resources.<group>.<key>, else resources.default.<key>, else fallback."""
    value = _group_resources(group).get(key)
    return fallback if value is None else value


def gpus(group):
    """GPUs per job of a group: its setting, else 1 on CUDA, else 0."""
    return group_resource(group, "gpu", 1 if CONFIG["device"] == "cuda" else 0)


def jobs_per_gpu(group):
    """Jobs of a group that share one GPU on a workstation (gpu_slot.py --jobs-per-gpu)."""
    return group_resource(group, "jobs_per_gpu", 1)


def gpu_slots_per_gpu():
    """Slots of one GPU in `--resources gpu=` (local runs): the lcm of the GPU groups' jobs_per_gpu
    (1 when no group shares: the gpu resource then counts GPUs)."""
    return math.lcm(1, *(jobs_per_gpu(g) for g in GROUPS if gpus(g)))


def gpu_resource(group):
    """The `gpu` resource of a group's jobs: on a cluster (sbatch and the job it runs) whole GPUs,
    which SLURM allocates; locally GPU slots, so that shared GPUs need no fractions: a job holds
    gpus * gpu_slots_per_gpu() / jobs_per_gpu (a whole-GPU job: all its GPUs' slots)."""
    if workflow.non_local_exec or workflow.remote_exec:
        return gpus(group)
    return gpus(group) * gpu_slots_per_gpu() // jobs_per_gpu(group)


def gpu_model(group):
    return group_resource(group, "gpu_model", "")


def experiment_group(wildcards):
    return EXPERIMENTS[wildcards.experiment]["group"]


# --------------------------------------------------------------------------- library inputs


def library(stage):
    """The library files that `stage` runs (ablationlab.stages.code_inputs), declared as inputs
    of its rule: Snakemake does not track imported code, and editing a module re-runs exactly the
    stages that import it."""
    return abl_stages.code_inputs(stage, LIB)
