"""prepare_data: fetch the dataset once and write uint8 tensors + meta.json.

`verified` (touched when prepare succeeds) is what rule all and the group targets ask for:
the workflow removes it when it finds the cache corrupted, and prepare_data runs again.
Nothing downstream reads it, so identical rebuilt data re-runs nothing else.

An image folder's listing is a param here (FOLDER_MANIFEST): a changed folder re-prepares
the data. A checkpoint: for an image folder, the jobs that read the data are planned again
once it has run, and only those whose view of the tensors changed run again (common.smk:
TRACK_CONTENT, data_version; a touched image re-trains nothing).
"""


checkpoint prepare_data:
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
        folder=FOLDER_MANIFEST,
    shell:
        "python -m ablationlab --log {log:q} prepare --dataset {wildcards.dataset:q}"
        " --out results/data/{wildcards.dataset:q} {params.options:q} {params.source:q}"
