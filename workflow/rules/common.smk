"""Shared by the stage files: the validated study, its shared constants, the seeds of each
experiment, the final targets, the checks before the first job, the library inputs.

Included first by the Snakefile. The configuration is validated and resolved here by
ablationlab.study (schema src/ablationlab/schemas/config.schema.yaml, defaults filled in, plus the
semantic checks); an invalid configuration stops Snakemake with one readable message
naming the key path, before any job is planned. Paths come from ablationlab.layout. Each stage
file holds its own helpers (data.smk: the prepared data and its readers' inputs; train.smk:
weights and per-group resources; track.smk: MLflow settings; adaptive.smk: the looks). The
rule files use what this file and data.smk define (data.smk is included second) and add their
own checks to PREFLIGHT, NOTICES and BEFORE_JOBS.

Parsing changes nothing and prints nothing (snakemake -n, --lint and --report are safe):
what must act before the jobs (the checks of PREFLIGHT, messages) runs in onstart, when jobs run.
"""

import contextlib
import os
import re
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
from ablationlab import defaults as abl_defaults
from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab import stages as abl_stages
from ablationlab import study as abl_study
from ablationlab.layout import (
    EVALUATE_FILES,
    MLFLOW_INFO,
    MLFLOW_RECORD,
    RENDERED,
    REPORT_HTML,
    REPORT_PDF,
    SEED_PLAN,
    STUDY_REPORT,
    STUDY_TABLE,
    SUMMARY,
    job_stem,
    seed_blocks as abl_seed_blocks,
)

LIB = Path(ablationlab.__file__).resolve().parent
with contextlib.suppress(ValueError):
    LIB = LIB.relative_to(Path.cwd().resolve())

# the library's packaged schema: one file for both checks
SCHEMA = abl_defaults.SCHEMA_PATH
ENV = "../envs/ablationlab.yaml"


def refuse(message):
    """Stop Snakemake with ``message`` alone: a WorkflowError raised here is followed by the line
    of this file that raised it, which reads like a traceback; SystemExit prints the message only
    (exit status 1; raised in onstart, Snakemake still releases its lock on the way out).
    """
    raise SystemExit(message)


try:
    STUDY = abl_study.load(config, SCHEMA)
except abl_study.ConfigError as err:
    # one problem is "<key path>: ...", several come listed under their own "invalid configuration:"
    text = str(err)
    if not text.startswith("invalid configuration:"):
        text = f"invalid configuration: {text}"
    refuse(text)
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


def verbatim(value):
    """A params value passed on as is: Snakemake formats plain string params as wildcard
    patterns, so config text ({word}, LaTeX braces) must reach params through a function.
    """
    return lambda wildcards: value


# adaptive seeding (adaptive.smk: adaptive_plan): each experiment's seeds come from the last look
ADAPTIVE = "adaptive" in STUDY.experiments


def seed_blocks(group):
    """The blocks of seeds one train job of `group` trains: the study's seeds (all, or
    resources.<group>.seeds_per_job at a time), then each block that adaptive seeding may add
    (ablationlab.layout.seed_blocks)."""
    per_job = group_resource(group, "seeds_per_job", None)
    return abl_seed_blocks(SEEDS, STUDY.experiments.get("adaptive"), per_job)


def train_jobs(exp):
    """The file stems of the train jobs of experiment `exp`: one per block of its seeds."""
    seeds = set(experiment_seeds(exp))
    blocks = seed_blocks(EXPERIMENTS[exp]["group"])
    return [job_stem(b) for b in blocks if set(b) <= seeds]


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


# Files between the stages (ablationlab.layout), not as rules.<rule>.output: Snakemake hashes a
# list input whole for every file of it when a rule references another rule's output, seconds of
# planning for a large study (benchmarks/plan_study.py). A job gets the folder of its inputs or
# outputs as input_folder()/output_folder() params, and a root of many (RUNS_ROOT) as a constant.


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


# --------------------------------------------------------------------------- before the jobs

# checks before the first job (not on -n, nor when nothing is to be done): each gets the jobs
# to run and returns an error line or None. A folder the run writes into that is read-only or
# immutable: Snakemake would fail removing old outputs with a traceback (it names
# write-protected files itself). The stage files add theirs (track.smk: the tracking store).
PREFLIGHT = [
    lambda jobs: abl_io.unwritable(f for job in jobs for f in [*job.output, *job.log]),
]
# what a run (not -n) says before its first job: functions yielding lines (data.smk, train.smk)
NOTICES = []
# what a run does once the checks passed, before its first job: functions of the jobs (data.smk)
BEFORE_JOBS = []


onstart:
    for notices in NOTICES:
        for line in notices():
            print(line, file=sys.stderr)
    jobs = list(workflow.dag.needrun_jobs())
    for check in PREFLIGHT:
        if problem := check(jobs):
            refuse(problem)
    for action in BEFORE_JOBS:
        action(jobs)


# --------------------------------------------------------------------------- library inputs


def library(stage):
    """The library files that `stage` runs (ablationlab.stages.code_inputs), declared as inputs
    of its rule: Snakemake does not track imported code, and editing a module re-runs exactly the
    stages that import it."""
    return abl_stages.code_inputs(stage, LIB)
