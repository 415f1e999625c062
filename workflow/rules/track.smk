"""MLflow tracking: one writer per study (rule `track`, one job).

It runs after summarize and logs the child runs (one per seed) that are new or changed,
updates every experiment's parent run (exactly the summary's numbers: experiments.csv,
diagnostics.csv; ablationlab.track) and tags superseded runs; it is idempotent
(runs are found by their run_key tag; unchanged ones are skipped) and the store's only
writer apart from live logging (tracking.live: train jobs, under a file lock with retries).
It writes results/mlflow.json (the study's MLflow experiment: MLFLOW_INFO) and
results/summary/mlflow.csv (every run's MLflow run id and link: MLFLOW_RECORD, the report reads
it). The job is light and talks to the tracking store, so it runs where Snakemake runs
(localrules): on a cluster that is the node that can reach the tracking server, and a SQLite
store is only ever written from one machine (live logging is off inside a SLURM job unless the
URI is a tracking server).

Names: `experiment` is an ablation experiment; MLflow's experiment (one per study) is always
`mlflow_experiment` here (config key tracking.experiment).

MLflow settings are defined here (MLFLOW_URI: credentials moved to MLflow's environment
variables, never into a command or log; MLFLOW_EXPERIMENT; the tracking server's check before the
first job); the train rules' live logging (train.smk) reads them too.
"""

import os

from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab import mlflow_store as abl_mlflow
from ablationlab.credentials import redact
from ablationlab.layout import (
    MLFLOW_INFO,
    MLFLOW_RECORD,
    RUNS_ROOT,
    STUDY_TABLE,
    SUMMARY,
    TRAIN_LOGS,
)

# Credentials in tracking.uri (https://user:pass@host) never reach a shell command or a log:
# they are moved into MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD environment variables
# (inherited by local jobs, exported by sbatch) and jobs get the bare URI.
MLFLOW_URI = abl_mlflow.export_credentials(CONFIG["tracking"]["uri"])
# credentials given: pass them on to remote jobs (sbatch exports them anyway)
if MLFLOW_URI != CONFIG["tracking"]["uri"]:
    workflow.register_envvars("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# the MLflow experiment of the study (config key tracking.experiment, default the study name)
MLFLOW_EXPERIMENT = CONFIG["tracking"]["experiment"] or STUDY_NAME
# the rules that write to the tracking store: track, and the train rules with live logging
TRACK_RULES = {"track"}
STORE_WRITERS = lambda job: job.rule.name in TRACK_RULES or (
    CONFIG["tracking"]["live"] and job.rule.name.startswith("train_")
)
# an unreachable tracking server, or a local store that cannot be written: one line before the
# first job, not minutes of retries or training lost
PREFLIGHT.append(
    lambda jobs: (
        abl_mlflow.store_problem(MLFLOW_URI) if any(map(STORE_WRITERS, jobs)) else None
    )
)


MLFLOW_TARGET = abl_layout.MLFLOW_TARGET


localrules:
    mlflow_init,
    track,


# Where the writer logs to, as a file of its own (a root of the DAG): a new tracking.uri, MLflow
# experiment or study name re-runs `track` through it.
rule mlflow_init:
    output:
        MLFLOW_TARGET,
    log:
        abl_layout.log_path("mlflow_init", "mlflow_init"),
    params:
        uri=verbatim(redact(MLFLOW_URI)),
        mlflow_experiment=verbatim(MLFLOW_EXPERIMENT),
        study_name=verbatim(STUDY_NAME),
    run:
        abl_io.write_json(output[0], dict(params.items()))


rule track:
    input:
        target=MLFLOW_TARGET,
        study_table=STUDY_TABLE,
        summary=SUMMARY,
        runs=after_data(
            lambda wildcards: run_files(EXPERIMENTS, abl_layout.TRACK_READS)
        ),
        code=library("track"),
    output:
        info=MLFLOW_INFO,
        record=MLFLOW_RECORD,
    log:
        abl_layout.log_path("track", "track"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        uri=verbatim(MLFLOW_URI),
        mlflow_experiment=verbatim(MLFLOW_EXPERIMENT),
        study_name=verbatim(STUDY_NAME),
        runs_dir=RUNS_ROOT,
        # the run directories, in input order (each once)
        runs=lambda wildcards, input: list(
            dict.fromkeys(os.path.dirname(f) for f in input.runs)
        ),
        summary_dir=input_folder("summary"),
        logs_dir=TRAIN_LOGS,
    shell:
        "python -m ablationlab --log {log:q} track study --study-table {input.study_table:q} --runs {params.runs_dir:q}"
        " --run {params.runs:q} --summary {params.summary_dir:q} --logs {params.logs_dir:q}"
        " --study {params.study_name:q} --out {output.info:q} --record {output.record:q}"
        " --uri {params.uri:q} --mlflow-experiment {params.mlflow_experiment:q}"
