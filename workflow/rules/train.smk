"""One train rule per group (train_baseline, train_<group>, ...) and a target rule per group.

A train job also evaluates its run on the test split, in the same process (`train
--evaluate`): one Python + torch start-up per run instead of two. Its code inputs are
therefore the train and the evaluate modules: editing evaluate.py re-runs the train jobs.
Each group gets its own resources (resources.<group> in the config), logs and benchmarks;
`snakemake <group>` trains and evaluates just that group. Every job receives its
experiment's resolved recipe as params (canonical JSON), so changing a recipe re-runs
exactly that experiment's jobs. Checkpoints (results/checkpoints/...) are not declared
outputs: an interrupted job resumes from them (--rerun-incomplete); a job re-run for its
evaluation only (evaluate.py, test images) resumes at the last epoch and trains nothing.
"""

for group in GROUPS:

    rule:
        name:
            f"train_{group}"
        input:
            data=data_files(
                ["meta.json", "train_x.pt", "train_y.pt", "val_x.pt", "val_y.pt"]
            ),
            test_data=data_files(["test_x.pt", "test_y.pt"]),
            code=library("train"),  # evaluate.py too: train --evaluate imports it
            weights=weights_file,
            gpu_slot=ancient(GPU_SLOT),
        output:
            expand(
                f"{RUN_DIR}/{{name}}",
                name=TRAIN_FILES + EVALUATE_FILES,
                allow_missing=True,
            ),
        log:
            f"{TRAIN_LOGS}/{{experiment}}/seed{{seed}}.log",
        benchmark:
            f"{TRAIN_BENCHMARKS}/{{experiment}}/seed{{seed}}.tsv"
        wildcard_constraints:
            experiment=experiment_regex(GROUP_EXPERIMENTS[group]),
        conda:
            ENV
        threads: group_resource(group, "threads", CONFIG["threads"])
        resources:
            gpu=gpu_resource(group),
            gpu_model=gpu_model(group),
            gpu_count=gpus(group),
            jobs_per_gpu=jobs_per_gpu(group),
            mem_mb=group_resource(group, "mem_mb", 4000),
            runtime=group_resource(group, "runtime", 120),
        params:
            recipe=recipe_json,
            data=data_version("train", "val"),
            test_data=data_version("test"),
            weights=weights_digest,
            data_dir=input_folder("data"),
            run_dir=RUN_DIR,
            checkpoints="results/checkpoints/{experiment}/seed{seed}",
            device=CONFIG["device"],
            compile=["--compile"] if CONFIG["compile"] else [],
            # live MLflow logging (tracking.live / system_metrics): not compared between
            # runs, so switching it on or off re-trains nothing (common.smk)
            track=live_tracking,
        shell:
            "python {input.gpu_slot:q} {resources.gpu_count} --jobs-per-gpu {resources.jobs_per_gpu} --"
            " python -m ablationlab train --data {params.data_dir:q} --recipe {params.recipe:q}"
            " --seed {wildcards.seed} --out {params.run_dir:q}"
            " --checkpoint-dir {params.checkpoints:q} --device {params.device:q} --threads {threads} {params.compile}"
            " --track={params.track:q} --evaluate"
            " > {log:q} 2>&1"

    rule:
        name:
            group
        default_target: False
        input:
            run_files(GROUP_EXPERIMENTS[group], EVALUATE_FILES[:1], SEEDS),
            DATA_VERIFIED,
