"""One train rule per group and block of seeds (train_<group>, train_<group>_more<j>) and a
target rule per group.

A train job trains every seed of its block for one experiment in one process (`train --seed
0 1 2 --evaluate`): one Python + torch start-up, one data load, one CUDA context per
experiment instead of per run; on a GPU its seeds train at once. The block is the study's
seeds (train_<group>) or, with adaptive seeding, one of the blocks of `adaptive.step` seeds
that the looks may add (train_<group>_more<j>: seed_blocks() in common.smk), so an added block
trains only its own seeds. Every run keeps its own output files, so Snakemake sees each run;
the seeds of a block are named in the outputs, not as a wildcard. The job also evaluates each
run on the test split, in the same process: its code inputs are the train and the evaluate
modules. Each group gets its own resources (resources.<group> in the config), logs and
benchmarks; `snakemake <group>` trains and evaluates just that group. Every job receives its
experiment's resolved recipe as params (canonical JSON), so changing a recipe re-runs exactly
that experiment's jobs. Checkpoints (results/checkpoints/...) are not declared outputs: an
interrupted job resumes every run from its own checkpoint (--rerun-incomplete), and a job
re-run with runs already trained (a seed added to the block, evaluate.py edited, new test
images) resumes them at their last epoch and trains nothing but the new runs.
"""

for group in GROUPS:
    for block, block_seeds in enumerate(seed_blocks()):

        rule:
            name:
                f"train_{group}" + (f"_more{block}" if block else "")
            input:
                data=data_files(
                    ["meta.json", "train_x.pt", "train_y.pt", "val_x.pt", "val_y.pt"]
                ),
                test_data=data_files(["test_x.pt", "test_y.pt"]),
                code=library("train"),  # evaluate.py too: train --evaluate imports it
                weights=weights_file,
                gpu_slot=ancient(GPU_SLOT),
            output:
                [
                    abl_layout.run_path("{experiment}", seed, name)
                    for seed in block_seeds
                    for name in TRAIN_FILES + EVALUATE_FILES
                ],
            log:
                abl_layout.train_job_file(
                    TRAIN_LOGS, "{experiment}", block_seeds, "log"
                ),
            benchmark:
                abl_layout.train_job_file(
                    TRAIN_BENCHMARKS, "{experiment}", block_seeds, "tsv"
                )
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
                seeds=block_seeds,
                # {seed} stands for each seed of the block (train --out/--checkpoint-dir)
                run_dirs=lambda wildcards: abl_layout.run_path(
                    wildcards.experiment, "{seed}"
                ),
                checkpoints=lambda wildcards: abl_layout.checkpoint_path(
                    wildcards.experiment, "{seed}"
                ),
                device=CONFIG["device"],
                compile=["--compile"] if CONFIG["compile"] else [],
                # live MLflow logging (tracking.live / system_metrics): not compared between
                # runs, so switching it on or off re-trains nothing (common.smk)
                track=live_tracking,
            shell:
                "python {input.gpu_slot:q} {resources.gpu_count} --jobs-per-gpu {resources.jobs_per_gpu} --"
                " python -m ablationlab train --data {params.data_dir:q} --recipe {params.recipe:q}"
                " --seed {params.seeds} --out {params.run_dirs:q}"
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
