"""prepare_data: fetch the dataset once and write uint8 tensors + meta.json.

`verified` (touched when prepare succeeds) is what rule all and the group targets ask for.
When the workflow finds the cache corrupted, prepare_data gets one more output, a marker named
after the corrupted state that the targets ask for too, and runs (common.smk: DATA_REBUILD);
the prepared files are ancient() inputs of their readers, so identical rebuilt data re-runs
nothing else. Its code inputs are the downloaders and parsers (ablationlab.prepare), which no
other stage runs.

An image folder's listing is a param here (FOLDER_MANIFEST): a changed folder re-prepares
the data. A checkpoint: for an image folder, the jobs that read the data are planned again
once it has run, and only those whose view of the tensors changed run again (common.smk:
TRACK_CONTENT, data_version; a touched image re-trains nothing).
"""


checkpoint prepare_data:
    input:
        code=library("prepare"),
    output:
        expand(f"{DATA_DIR}/{{name}}", name=DATA_FILES + [abl_layout.DATA_META]),
        verified=touch(f"{DATA_DIR}/verified"),
        # only while the cache is found corrupted: a missing marker, so the job runs (common.smk)
        rebuild=([touch(f"{DATA_DIR}/{DATA_REBUILD}")] if DATA_REBUILD else []),
    log:
        abl_layout.log_path("prepare_data", DATASET),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        options=verbatim(data_options()),
        source=verbatim(data_source()),
        dataset=DATASET,
        folder=FOLDER_MANIFEST,
        out_dir=output_folder("verified"),
    shell:
        "python -m ablationlab --log {log:q} prepare --dataset {params.dataset:q}"
        " --out {params.out_dir:q} {params.options:q} {params.source:q}"
