"""One evaluate rule per group (evaluate_baseline, evaluate_<group>, ...): test-set metrics,
confusion matrix, predictions and activations of one run.

Per group, like the train rules, so that a group's evaluation asks for that group's
resources (transfer: a GPU) and can be sent to its own SLURM partition
(set-resources: evaluate_transfer: slurm_partition: gpu).
"""

for group in GROUPS:

    rule:
        name:
            f"evaluate_{group}"
        input:
            data=data_files(["meta.json", "test_x.pt", "test_y.pt"]),
            run=expand(f"{RUN_DIR}/{{name}}", name=TRAIN_FILES, allow_missing=True),
            code=library("evaluate"),
            gpu_slot=ancient(GPU_SLOT),
        output:
            expand(f"{RUN_DIR}/{{name}}", name=EVALUATE_FILES, allow_missing=True),
        log:
            "results/logs/evaluate/{experiment}/seed{seed}.log",
        wildcard_constraints:
            experiment=experiment_regex(GROUP_EXPERIMENTS[group]),
        conda:
            ENV
        threads: 1
        resources:
            gpu=gpu_resource(group),
            gpu_model=gpu_model(group),
            gpu_count=gpus(group),
            jobs_per_gpu=jobs_per_gpu(group),
            mem_mb=group_resource(group, "mem_mb", 2000),
            runtime=30,
        params:
            data=data_version("test"),
            data_dir=lambda wildcards, input: Path(input.data[0]).parent,
            device=CONFIG["device"],
        shell:
            "python {input.gpu_slot:q} {resources.gpu_count} --jobs-per-gpu {resources.jobs_per_gpu} --"
            " python -m ablationlab evaluate --data {params.data_dir:q}"
            " --run results/runs/{wildcards.experiment:q}/seed{wildcards.seed} --device {params.device:q}"
            " > {log:q} 2>&1"


# the study's seeds (adaptive seeding adds its further seeds through summarize)
FINAL_TARGETS += run_files(EXPERIMENTS, EVALUATE_FILES[:1], SEEDS)
