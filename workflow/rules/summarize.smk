"""summarize: runs.csv (one row per run), experiments.csv (per experiment: mean, std,
95 % t-interval, min/max, Δ vs the reference with a paired t-test over the shared seeds (Welch
without pairs), Holm, BH and the verdict, epochs, parameters, status) and diagnostics.csv
(per experiment: the reading of its training curves).

Reads only the study table and each run's train.json / metrics.json / history.csv (the
MLflow writer, track.smk, runs after it: the runs' MLflow ids are in its
results/summary/mlflow.csv). The study table is rewritten only when its content changes
(study.smk): editing a group's notes or the report title does not re-run this rule.
"""

from ablationlab import layout as abl_layout
from ablationlab.layout import RUNS_ROOT, SEED_PLAN, STUDY_TABLE, SUMMARY


rule summarize:
    input:
        study_table=STUDY_TABLE,
        runs=after_data(
            lambda wildcards: run_files(EXPERIMENTS, abl_layout.SUMMARIZE_READS)
        ),
        # each experiment's seeds (adaptive seeding)
        seeds=[SEED_PLAN] if ADAPTIVE else [],
        code=library("summarize"),
    output:
        runs=SUMMARY[0],
        experiments=SUMMARY[1],
        diagnostics=SUMMARY[2],
    log:
        abl_layout.log_path("summarize", "summarize"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        runs_dir=RUNS_ROOT,
        out_dir=output_folder("runs"),
        seeds=seed_plan_option,
    shell:
        "python -m ablationlab --log {log:q} summarize --study {input.study_table:q} --runs {params.runs_dir:q}"
        " --out {params.out_dir:q} {params.seeds:q}"
