"""MLflow tracking: mlflow_init (once), track (one child run per seed), track_experiment
(one parent run per experiment, seed-aggregated).

Idempotent (runs are found by their run_key tag) and parallel-safe (a file lock next to the
SQLite store). These jobs are light and talk to the tracking store, so they run where
Snakemake runs (localrules): on a cluster that is the node that can reach the tracking
server, and a SQLite store is only ever written from one machine (live logging from train
jobs, tracking.live, is off inside a SLURM job unless the URI is a tracking server).

Credentials in tracking.uri (https://user:pass@host) never reach a shell command or a log:
they are moved into MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD environment variables
(inherited by local jobs, exported by sbatch) and jobs get the bare URI.
"""

from ablationlab import tracking as abl_tracking

MLFLOW_URI = abl_tracking.export_credentials(CONFIG["tracking"]["uri"])
# credentials given: pass them on to remote jobs (sbatch exports them anyway)
if MLFLOW_URI != CONFIG["tracking"]["uri"]:
    workflow.register_envvars("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
MLFLOW_EXPERIMENT = CONFIG["tracking"]["experiment"] or CONFIG["study"]["name"]
TRACK_RULES = {"mlflow_init", "track", "track_experiment"}


# an unreachable tracking server: one line before the first job, not minutes of retries per job
PREFLIGHT.append(
    lambda jobs: (
        abl_tracking.server_problem(MLFLOW_URI)
        if any(job.rule.name in TRACK_RULES for job in jobs)
        else None
    )
)
MLFLOW_INIT = "results/mlflow.json"
TRACKED_FILES = [
    "recipe.json",
    "train.json",
    "history.csv",
    "weights.pt",
] + EVALUATE_FILES[:2]


# `train --track {params.track:q}` values (the train rule: track=lambda wc: TRACK_LIVE[wc.experiment])
TRACK_LIVE = {
    exp: abl_tracking.LiveSpec(
        uri=MLFLOW_URI,
        mlflow_experiment=MLFLOW_EXPERIMENT,
        study=CONFIG["study"]["name"],
        experiment=exp,
        group=EXPERIMENTS[exp]["group"],
        dataset=DATASET,
        live=CONFIG["tracking"]["live"],
        system_metrics=CONFIG["tracking"]["system_metrics"],
    )
    for exp in EXPERIMENTS
}


localrules:
    mlflow_init,
    track,
    track_experiment,


rule mlflow_init:
    input:
        code=library("tracking"),
    output:
        MLFLOW_INIT,
    log:
        "results/logs/mlflow_init/mlflow_init.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        uri=verbatim(MLFLOW_URI),
        experiment=verbatim(MLFLOW_EXPERIMENT),
    shell:
        "python -m ablationlab track init --uri {params.uri:q}"
        " --mlflow-experiment {params.experiment:q} --out {output:q} > {log:q} 2>&1"


rule track:
    input:
        init=MLFLOW_INIT,
        run=expand(f"{RUN_DIR}/{{name}}", name=TRACKED_FILES, allow_missing=True),
        train_log="results/logs/train/{experiment}/seed{seed}.log",
        code=library("tracking"),
    output:
        f"{RUN_DIR}/mlflow.json",
    log:
        "results/logs/track/{experiment}/seed{seed}.log",
    wildcard_constraints:
        experiment=experiment_regex(EXPERIMENTS),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        uri=verbatim(MLFLOW_URI),
        experiment=verbatim(MLFLOW_EXPERIMENT),
        study=CONFIG["study"]["name"],
        group=experiment_group,
        dataset=DATASET,
    shell:
        "python -m ablationlab track run"
        " --run results/runs/{wildcards.experiment:q}/seed{wildcards.seed}"
        " --experiment {wildcards.experiment:q} --group {params.group:q}"
        " --dataset {params.dataset:q} --study {params.study:q} --log {input.train_log:q}"
        " --uri {params.uri:q} --mlflow-experiment {params.experiment:q} > {log:q} 2>&1"


rule track_experiment:
    input:
        init=MLFLOW_INIT,
        runs=lambda wc: run_files([wc.experiment], TRACKED_FILES + ["mlflow.json"]),
        code=library("tracking"),
    output:
        "results/runs/{experiment}/mlflow.json",
    log:
        "results/logs/track_experiment/{experiment}.log",
    wildcard_constraints:
        experiment=experiment_regex(EXPERIMENTS),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        uri=verbatim(MLFLOW_URI),
        experiment=verbatim(MLFLOW_EXPERIMENT),
        study=CONFIG["study"]["name"],
        group=experiment_group,
        dataset=DATASET,
        runs=lambda wc: [f"results/runs/{wc.experiment}/seed{s}" for s in SEEDS],
    shell:
        "python -m ablationlab track experiment"
        " --run {params.runs:q}"
        " --experiment {wildcards.experiment:q} --group {params.group:q}"
        " --dataset {params.dataset:q} --study {params.study:q} --out {output:q}"
        " --uri {params.uri:q} --mlflow-experiment {params.experiment:q} > {log:q} 2>&1"


FINAL_TARGETS += [f"results/runs/{exp}/mlflow.json" for exp in EXPERIMENTS]
