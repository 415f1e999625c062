"""figures and render_report (stage `report`): every plot of the report, then
reports/report.html (one self-contained file) and reports/report.pdf (WeasyPrint, from the
same HTML with the figures as files instead of data: URIs).

The figure files are known from the study table alone (ablationlab.figure_plan.plan), so each
is a declared output with a report() flag: `snakemake --report report.zip` shows them too.
figures reads the study table, the summary, the prepared data and the run files;
render_report also reads report.json, so editing a group's notes or the report title
re-renders the report and nothing else (study.smk).
"""

from ablationlab import figure_plan as abl_figure_plan
from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab.layout import (
    FIGURE_MANIFEST,
    MLFLOW_RECORD,
    RENDERED,
    SEED_PLAN,
    STUDY_REPORT,
    STUDY_TABLE,
    SUMMARY,
    TRAIN_BENCHMARKS,
)


report: "../report/workflow.rst"


GROUP_TITLES = {
    "baseline": "Baseline",
    abl_figure_plan.STUDY_GROUP: "All experiments",
} | {g["id"]: g["title"] for g in STUDY.report["groups"]}
# a group's category in `snakemake --report`, which formats it as a wildcard pattern (braces
# cannot be escaped there): a title with braces is shown by its group id instead
REPORT_CATEGORIES = {
    gid: (gid if "{" in title or "}" in title else title)
    for gid, title in GROUP_TITLES.items()
}
FIGURE_PLAN = abl_figure_plan.plan(STUDY.experiments)
FIGURE_FILES = [f"{abl_layout.FIGURES_DIR}/{item['file']}" for item in FIGURE_PLAN]

# every planned figure, flagged for `snakemake --report`: category per group, and the caption
# template per kind that the figures stage renders into the report (by absolute path: Snakemake
# reads a relative one from this file's folder)
FIGURE_FLAGS = [
    {
        "caption": str(abl_figure_plan.caption_file(item["kind"])),
        "category": REPORT_CATEGORIES.get(item["group"], item["group"]),
        "labels": {"group": item["group"], "figure": item["kind"]},
    }
    for item in FIGURE_PLAN
]
FIGURES = [report(f, **flags) for f, flags in zip(FIGURE_FILES, FIGURE_FLAGS)]
TEMPLATES = sorted(str(p) for p in (LIB / "templates").glob("*") if p.is_file())
CAPTIONS = sorted(
    {
        str(LIB / "templates" / "captions" / f"{item['kind']}.rst")
        for item in FIGURE_PLAN
    }
)


rule figures:
    input:
        study_table=STUDY_TABLE,
        summary=SUMMARY,
        data=data_files(["meta.json", "train_x.pt", "train_y.pt", "test_x.pt"]),
        runs=lambda wildcards: run_files(EXPERIMENTS, abl_layout.FIGURE_READS),
        seeds=[SEED_PLAN] if ADAPTIVE else [],
        code=library("figures"),
        captions=CAPTIONS,
    output:
        figures=FIGURES,
        manifest=FIGURE_MANIFEST,
    log:
        abl_layout.log_path("figures", "figures"),
    conda:
        ENV
    # figures drawn in parallel processes, one core left for track, which runs beside it
    threads: max(1, (workflow.cores or 1) - 1)
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        data=data_version("train", "val", "test"),
        summary_dir=input_folder("summary"),
        data_dir=input_folder("data"),
        runs_dir=RUNS_ROOT,
        out_dir=output_folder("manifest"),
        seeds=seed_plan_option,
    shell:
        "python -m ablationlab --log {log:q} figures --study {input.study_table:q} --summary {params.summary_dir:q}"
        " --data {params.data_dir:q} --runs {params.runs_dir:q} --out {params.out_dir:q}"
        " --jobs {threads} {params.seeds:q}"


# The report as rendered (RENDERED), then as published in reports/. Snakemake removes a job's
# outputs before it runs and a failed job's outputs after it, so the user's reports/report.* are
# the outputs of publish_report only, which runs once a render has succeeded: a failed figures or
# render_report job leaves the last good report in place.


localrules:
    publish_report,


# the report stage; not named `report`, which is Snakemake's report() flag and directive
rule render_report:
    input:
        study_report=STUDY_REPORT,
        study_table=STUDY_TABLE,
        summary=SUMMARY,
        # every run's MLflow id and link (summarize.read_summary joins it to runs.csv)
        tracked=MLFLOW_RECORD,
        figures=FIGURE_FILES,
        manifest=FIGURE_MANIFEST,
        meta=data_files(["meta.json"]),
        # wall time per train job: results/benchmarks/train/<experiment>/seed<seeds>.tsv
        benchmarks=lambda wildcards: [
            abl_layout.train_job_file(TRAIN_BENCHMARKS, exp, stem, "tsv")
            for exp in EXPERIMENTS
            for stem in train_jobs(exp)
        ],
        seeds=[SEED_PLAN] if ADAPTIVE else [],
        code=library("report"),
        templates=TEMPLATES,
    output:
        html=expand(RENDERED, ext="html"),
        pdf=expand(RENDERED, ext="pdf"),
    log:
        abl_layout.log_path("report", "report"),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        summary_dir=input_folder("summary"),
        figures_dir=input_folder("manifest"),
        data_dir=input_folder("meta"),
        benchmarks_dir=TRAIN_BENCHMARKS,
        seeds=seed_plan_option,
    shell:
        "python -m ablationlab --log {log:q} report --study-report {input.study_report:q} --study {input.study_table:q}"
        " --summary {params.summary_dir:q} --figures {params.figures_dir:q} --data {params.data_dir:q}"
        " --benchmarks {params.benchmarks_dir:q} --benchmark-files {input.benchmarks:q}"
        " --out-html {output.html:q} --out-pdf {output.pdf:q} {params.seeds:q}"


# reports/report.{html,pdf}, one job each, from the rendered file: a copy of its own (editing or
# locking it leaves the build's file alone) with the rendered file's mtime, so Snakemake sees it no
# older than its input, put in place atomically (abl_io.publish); run in Snakemake's process
rule publish_report:
    input:
        after_data(lambda wildcards: RENDERED.format(ext=wildcards.ext)),
    output:
        report(
            abl_layout.PUBLISHED,
            caption="../report/report.rst",
            category="Report",
            labels={"group": "report", "figure": "{ext} report"},
        ),
    log:
        abl_layout.log_path("report", "publish_{ext}"),
    wildcard_constraints:
        ext="html|pdf",
    run:
        abl_io.publish(input[0], output[0])


# The end of a run that leaves the published report up to date (rendered in this run, or no older
# than the summary; a group target that re-summarized without re-rendering prints nothing) says what
# came out: the results table, the report's path and the MLflow command, as `python -m ablationlab
# show` prints them on demand. Snakemake runs this only after jobs ran (not on -n, nor when nothing
# was to be done); a problem with it is one warning line and never fails the run.
onsuccess:
    try:
        # imported here, not at the top: every parse of the workflow (each -n, each cluster job) would pay it
        from ablationlab import show as abl_show

        if abl_show.report_current(abl_layout.REPORT_HTML, abl_layout.SUMMARY_DIR):
            text = abl_show.summary(
                abl_layout.SUMMARY_DIR,
                abl_layout.REPORT_HTML,
                abl_layout.MLFLOW_INFO,
            )
            print(f"\n{text}", flush=True)
    except Exception as err:
        print(f"warning: results table: {err}", file=sys.stderr)
