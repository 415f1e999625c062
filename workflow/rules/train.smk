"""One train rule per group and block of seeds (train_<group>, train_<group>_more<j>) and a
target rule per group.

A train job trains every seed of its block for one experiment in one process (`train --seed
0 1 2 --evaluate`): one Python + torch start-up, one data load, one CUDA context per
experiment instead of per run; on a GPU its seeds train at once. The blocks (seed_blocks() in
common.smk) are the study's seeds, in one block or in blocks of resources.<group>.seeds_per_job (a
slow group then runs beside the others), then, with adaptive seeding, the blocks of `adaptive.step`
seeds that the looks may add, so an added block trains only its own seeds; the first block's rule
is train_<group>, each further block's train_<group>_more<j>. Every run keeps its own output files, so Snakemake sees each run;
the seeds of a block are named in the outputs, not as a wildcard. The job also evaluates each
run on the test split, in the same process: its code inputs are the train and the evaluate
modules. Each group gets its own resources (resources.<group> in the config), logs and
benchmarks; `snakemake <group>` trains and evaluates just that group. Every job receives its
experiment's resolved recipe as params (canonical JSON), so changing a recipe re-runs exactly
that experiment's jobs. Checkpoints (results/checkpoints/...) are not declared outputs: an
interrupted job resumes every run from its own checkpoint (--rerun-incomplete), and a job
re-run with runs already trained (a seed added to the block, evaluate.py edited, new test
images) resumes them at their last epoch and trains nothing but the new runs.

Defined here: the weights file of a recipe (an input, compared by its sha256), the per-group
resources (resources.<group> in the config: threads, memory, GPUs, GPU sharing) and the live
MLflow logging of the train jobs (MLflow settings: track.smk).
"""

import functools
import math
import os
from pathlib import Path

from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab import study as abl_study
from ablationlab import live_mlflow as abl_live_mlflow
from ablationlab.layout import EVALUATE_FILES, TRAIN_BENCHMARKS, TRAIN_FILES, TRAIN_LOGS

# the script that gives each job its own GPU(s) (see its docstring)
GPU_SLOT = os.path.relpath(Path(workflow.basedir, "workflow", "scripts", "gpu_slot.py"))


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


def live_tracking(wildcards):
    """`train --track` value of an experiment's jobs (tracking.live / system_metrics): a
    LiveSpec, which Snakemake does not compare between runs, so switching live logging or the
    tracking server re-trains nothing."""
    return abl_live_mlflow.LiveSpec(
        uri=MLFLOW_URI,
        mlflow_experiment=MLFLOW_EXPERIMENT,
        study=STUDY_NAME,
        experiment=wildcards.experiment,
        group=EXPERIMENTS[wildcards.experiment]["group"],
        dataset=DATASET,
        live=CONFIG["tracking"]["live"],
        system_metrics=CONFIG["tracking"]["system_metrics"],
    )


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


def gpu_notices():
    """What a local run says about GPU sharing before its first job."""
    if not workflow.non_local_exec and gpu_slots_per_gpu() > 1:
        yield (
            f"GPU sharing (resources.<group>.jobs_per_gpu): --resources gpu= counts GPU slots,"
            f" {gpu_slots_per_gpu()} per GPU (cap with gpu=<GPUs x {gpu_slots_per_gpu()}>)"
        )


NOTICES.append(gpu_notices)


for group in GROUPS:
    for block, block_seeds in enumerate(seed_blocks(group)):

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
                # runs, so switching it on or off re-trains nothing (live_tracking above)
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
