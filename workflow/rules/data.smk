"""prepare_data: fetch the dataset once and write uint8 tensors + meta.json.

`verified` (touched when prepare succeeds) is what rule all and the group targets ask for:
the workflow removes it when it finds the cache corrupted, and prepare_data runs again.
Nothing downstream reads it, so identical rebuilt data re-runs nothing else.
"""


rule prepare_data:
    input:
        code=library("data"),
    output:
        expand("results/data/{{dataset}}/{name}", name=DATA_FILES + ["meta.json"]),
        verified=touch("results/data/{dataset}/verified"),
    log:
        "results/logs/prepare_data/{dataset}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        options=verbatim(data_options()),
        source=verbatim(data_source()),
    shell:
        "python -m ablationlab prepare --dataset {wildcards.dataset:q}"
        " --out results/data/{wildcards.dataset:q} {params.options:q} {params.source:q}"
        " > {log:q} 2>&1"


FINAL_TARGETS.append(DATA_VERIFIED)
