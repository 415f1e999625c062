"""study: the resolved experiment table and the report's study description.

Two small JSON files from params: written where Snakemake runs (localrules), never queued
on a cluster.
"""


localrules:
    study,


rule study:
    input:
        library("study"),
    output:
        experiments=STUDY_TABLE,
        report=STUDY_REPORT,
    log:
        "results/logs/study/study.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        # canonical JSON: the files are rewritten only when their content changes
        experiments=verbatim(abl_io.canonical_json(STUDY.experiments)),
        report=verbatim(abl_io.canonical_json(STUDY.report)),
    script:
        "../scripts/write_study.py"
