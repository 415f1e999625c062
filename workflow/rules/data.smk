"""prepare_data: fetch the dataset once and write uint8 tensors + meta.json.

`verified` (touched when prepare succeeds) is what rule all and the group targets ask for.
When the workflow finds the cache corrupted, prepare_data gets one more output, a marker named
after the corrupted state that the targets ask for too, and runs (DATA_REBUILD below);
the prepared files are ancient() inputs of their readers, so identical rebuilt data re-runs
nothing else. Its code inputs are the downloaders and parsers (ablationlab.prepare), which no
other stage runs.

An image folder's listing is a param here (FOLDER_MANIFEST): a changed folder re-prepares
the data. A checkpoint: for an image folder, the jobs that read the data are planned again
once it has run, and only those whose view of the tensors changed run again (TRACK_CONTENT,
data_version below; a touched image re-trains nothing).

The prepared data and their readers' inputs are defined here (DATA_DIR, data_files, after_data,
data_version): the rule files included after this one use them.
"""

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path


from ablationlab import data as abl_data
from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab import stages as abl_stages
from ablationlab.layout import DATA_FILES


def data_options():
    """Options of `prepare` that change the prepared tensors (params of prepare_data)."""
    data = CONFIG["data"]
    options = [
        "--val-size",
        str(data["val_size"]),
        "--split-seed",
        str(data["split_seed"]),
    ]
    if data["image_size"] is not None:
        options += ["--image-size", str(data["image_size"])]
    if data["dataset"] == "imagefolder":
        options += ["--root", data["root"]]
    return options


def data_source():
    """Where raw files come from (checksum-verified, so they do not change the data)."""
    data = CONFIG["data"]
    options = ["--root", data["root"]] if data["dataset"] != "imagefolder" else []
    if data["mirror"]:
        options += ["--mirror", data["mirror"]]
    return options


# The prepared data's folder is named after what decides its tensors (ablationlab.layout.data_key):
# the prepare options and the code that both writes and reads them (data.py, io.py:
# ablationlab.stages.shared_code). A change of either is another folder, so every job that reads
# the data is planned again by its missing input, a dry run included; the folders of other keys
# are removed when a run prepares this one (prune_data).
DATA_CODE = abl_stages.shared_code("prepare", ("train", "figures"), LIB)
DATA_DIR = abl_layout.data_dir(DATASET, abl_layout.data_key(data_options(), DATA_CODE))


# A prepared cache whose tensors do not match their sha256 is rebuilt in this very run (a dry
# run plans it) without parsing changing a file: prepare_data then has one more output, an empty
# marker named after this corrupted state (DATA_REBUILD), which the targets ask for with the
# `verified` marker (DATA_VERIFIED): missing, so the job runs. Nothing Snakemake records (params,
# the input set) changes, so the healthy cache re-runs nothing once more; the data files stay
# ancient() inputs, so identical rebuilt data re-runs nothing else. The main process checks
# (sha256 of the cache); a job on a cluster, which parses the workflow too, gets the marker's
# name through the environment.
def rebuild_name(problem):
    """`rebuild-<digest>` of the cache's corrupted state: the problem, its files' sizes and mtimes."""
    files = [Path(DATA_DIR, name) for name in DATA_FILES + ["meta.json"]]
    state = [problem] + [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()
    ]
    digest = hashlib.sha256(abl_io.canonical_json(state).encode()).hexdigest()
    return f"rebuild-{digest[:12]}"


REBUILD_VAR = (
    "ABLATIONLAB_DATA_REBUILD"  # optional: registered only when set (not in envvars:)
)
if workflow.is_main_process:
    DATA_PROBLEM = abl_data.corruption(DATA_DIR)
    DATA_REBUILD = rebuild_name(DATA_PROBLEM) if DATA_PROBLEM else ""
    if DATA_REBUILD:
        os.environ[REBUILD_VAR] = DATA_REBUILD
        workflow.register_envvars(REBUILD_VAR)
else:
    DATA_PROBLEM, DATA_REBUILD = None, os.environ.get(REBUILD_VAR, "")
# what `all` and the group targets ask for: prepare_data's marker (and its rebuild, see above)
DATA_VERIFIED = [f"{DATA_DIR}/verified"] + (
    [f"{DATA_DIR}/{DATA_REBUILD}"] if DATA_REBUILD else []
)


def data_notices():
    """What a run says about the prepared data before its first job."""
    if DATA_PROBLEM:
        yield f"warning: {DATA_PROBLEM}: prepare_data rebuilds it"


NOTICES.append(data_notices)


def prune_data(jobs):
    """Remove the dataset's prepared folders of other options or code when ``jobs`` prepare this one."""
    if any(job.rule.name == "prepare_data" for job in jobs):
        for stale in abl_layout.stale_data_dirs(DATA_DIR):
            shutil.rmtree(stale)
            print(
                f"removed {stale}: prepared for other data options or code",
                file=sys.stderr,
            )


BEFORE_JOBS.append(prune_data)


# An image folder can change while the config does not: then prepare_data is a checkpoint
# that the jobs reading its files wait for, and they are planned again once it has run, with
# the digest of the content they read as a param. Other datasets are checksum-verified (or
# bundled): their content follows from the prepare options, which are then the param, with
# no re-planning (it doubles the planning time of a large study: benchmarks/plan_study.py).
TRACK_CONTENT = DATASET == "imagefolder"


def after_data(files):
    """``files`` (a list, or an input function) as an input function that waits for prepare_data
    when TRACK_CONTENT: the job is planned again once the data are prepared. The jobs after the
    train jobs need it too, not only those that read the data: once a checkpoint has run,
    Snakemake 9 plans afresh only the jobs that waited for it and keeps, for every other job, the
    reasons to run it found before (a touched image re-ran summarize and everything after it).
    """
    if not TRACK_CONTENT:
        return files

    def prepared(wildcards):
        checkpoints.prepare_data.get()
        return files(wildcards) if callable(files) else files

    return prepared


def data_files(names):
    """Prepared data files (after_data). ancient(): re-prepared identical data re-runs nothing
    (data_version decides)."""
    return after_data(ancient(expand(f"{DATA_DIR}/{{name}}", name=names)))


@functools.lru_cache(maxsize=None)
def _data_digest(splits, stat):
    try:
        return abl_data.data_digest(abl_data.load_meta(DATA_DIR), splits)
    except (abl_data.DataError, OSError):
        return "unreadable"  # differs from any recorded digest: the job re-runs


def data_version(*splits):
    """Param of the jobs reading the prepared data: what decides the content that readers
    of ``splits`` see. The prepare options, or for an image folder the content digest
    (abl_data.data_digest), read once prepare_data has run. A change re-runs the job."""
    if not TRACK_CONTENT:
        return verbatim(data_options())

    def digest(wildcards):
        # raises while prepare_data is pending: Snakemake asks again once it has run
        checkpoints.prepare_data.get()
        st = Path(DATA_DIR, "meta.json").stat()
        return _data_digest(splits, (st.st_mtime_ns, st.st_size, st.st_ino))

    return digest


def folder_manifest():
    """The image folder's listing digest (abl_data.folder_manifest; "" for other datasets),
    a param of prepare_data: adding, removing or overwriting an image re-prepares the data.
    Stat only, by the main process only (jobs do not compare params): 0.3 s for 50 000 files.
    """
    if DATASET != "imagefolder" or not workflow.is_main_process:
        return ""
    try:
        return abl_data.folder_manifest(CONFIG["data"]["root"])
    except abl_data.DataError as err:
        refuse(f"data.root: {err}")


FOLDER_MANIFEST = folder_manifest()


checkpoint prepare_data:
    input:
        code=library("prepare"),
    output:
        expand(f"{DATA_DIR}/{{name}}", name=DATA_FILES + [abl_layout.DATA_META]),
        verified=touch(f"{DATA_DIR}/verified"),
        # only while the cache is found corrupted: a missing marker, so the job runs (DATA_REBUILD)
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
