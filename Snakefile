"""ablationlab: a CNN ablation study as a reproducible Snakemake workflow.

snakemake --cores 4                                  # the study in config.yaml
snakemake --cores 2 --configfile presets/quick.yaml  # the offline quick study
snakemake --cores 4 dropout                          # one group (a target rule per group)
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


wildcard_constraints:
    seed=r"\d+",
    dataset=r"[A-Za-z0-9_]+",


# validates the config (src/ablationlab/schemas/config.schema.yaml) and resolves the experiments
include: "workflow/rules/common.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/adaptive.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
