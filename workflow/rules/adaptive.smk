"""Adaptive seeding (adaptive.enabled): a chain of checkpoints, one per look.

Look k (results/adaptive/look<k>.json, ablationlab.adaptive) reads the test accuracy of
every experiment on the seeds it has so far (the study's at look 1, else what look k-1
decided), tests every comparison, and gives each undecided one `step` more seeds for both
sides. Only those new seed jobs are planned next; the first look that adds none is the
last, copied to results/adaptive/seeds.json, and every aggregating stage asks for the
seeds it names (experiment_seeds in common.smk, from adaptive_plan). A finished study plans
nothing again; a changed recipe re-trains its own runs and re-reads the (cheap, local) looks, whose
verdicts on the other experiments' unchanged runs stay as they were.

Nothing here is requested when adaptive seeding is off. The looks' results as the workflow reads
them (read_look, adaptive_plan, the runs each look reads) are in adaptive_looks.smk, included
here (Snakemake's linter keeps functions and rules in separate files).
"""


include: "adaptive_looks.smk"


localrules:
    adaptive_look,
    adaptive_seeds,


checkpoint adaptive_look:
    input:
        study_table=STUDY_TABLE,
        runs=after_data(look_runs),
        previous=previous_look,
        code=library("adaptive"),
    output:
        look_file("{look}"),
    log:
        abl_layout.log_path("adaptive", "look{look}"),
    wildcard_constraints:
        look=r"[1-9]\d*",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        runs_dir=RUNS_ROOT,
        previous=lambda wildcards, input: (
            ["--previous", *input.previous] if input.previous else []
        ),
    shell:
        "python -m ablationlab --log {log:q} adaptive --study {input.study_table:q} --runs {params.runs_dir:q}"
        " --look {wildcards.look} {params.previous:q} --out {output:q}"


rule adaptive_seeds:
    input:
        after_data(lambda wildcards: look_file(adaptive_plan()["look"])),
    output:
        SEED_PLAN,
    log:
        abl_layout.log_path("adaptive", "seeds"),
    run:
        abl_io.publish(input[0], output[0])
