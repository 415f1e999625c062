"""evaluate: test-set metrics, confusion matrix, predictions and activations of one run."""


rule evaluate:
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
        experiment=experiment_regex(EXPERIMENTS),
    conda:
        ENV
    threads: 1
    resources:
        gpu=lambda wc: gpus(experiment_group(wc)),
        gpu_model=lambda wc: gpu_model(experiment_group(wc)),
        mem_mb=lambda wc: group_resource(experiment_group(wc), "mem_mb", 2000),
        runtime=30,
    params:
        data_dir=lambda wildcards, input: Path(input.data[0]).parent,
        device=CONFIG["device"],
    shell:
        "python {input.gpu_slot:q} {resources.gpu} --"
        " python -m ablationlab evaluate --data {params.data_dir:q}"
        " --run results/runs/{wildcards.experiment:q}/seed{wildcards.seed} --device {params.device:q}"
        " > {log:q} 2>&1"


FINAL_TARGETS += run_files(EXPERIMENTS, EVALUATE_FILES[:1])
