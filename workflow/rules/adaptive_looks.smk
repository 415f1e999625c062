"""Adaptive seeding's looks as the workflow reads them (included by adaptive.smk): the result of
each look (a checkpoint), the seeds it tested, the last look (adaptive_plan: every aggregating
stage's seeds, common.smk experiment_seeds) and the inputs of a look.
"""

import functools
import os

from snakemake.exceptions import WorkflowError

from ablationlab import io as abl_io
from ablationlab import layout as abl_layout
from ablationlab.layout import RUNS_ROOT, SEED_PLAN, STUDY_TABLE

look_file = abl_layout.look_path


@functools.lru_cache(maxsize=None)
def _read_look(path, mtime_ns):
    return abl_io.read_json(path)


def read_look(k):
    """The result of look k (IncompleteCheckpointException until that checkpoint has run)."""
    path = checkpoints.adaptive_look.get(look=k).output[0]
    return _read_look(path, os.stat(path).st_mtime_ns)


def look_seeds(k):
    """{experiment: seeds} tested at look k: the study's at look 1, else what look k-1 decided."""
    return {e: SEEDS for e in EXPERIMENTS} if k == 1 else read_look(k - 1)["seeds"]


def adaptive_plan():
    """The last look's result: the first look that added no seed."""
    # every look but the last adds a seed somewhere, so there are at most this many
    limit = len(EXPERIMENTS) * STUDY.experiments["adaptive"]["max_seeds"] + 1
    for k in range(1, limit + 1):
        result = read_look(k)
        if result["done"]:
            return result
    raise WorkflowError(f"adaptive seeding: no decision after {limit} looks")


def look_runs(wildcards):
    seeds = look_seeds(int(wildcards.look))
    return [
        abl_layout.run_path(e, s, name)
        for e in EXPERIMENTS
        for s in seeds[e]
        for name in abl_layout.ADAPTIVE_READS
    ]


def previous_look(wildcards):
    k = int(wildcards.look)
    return [look_file(k - 1)] if k > 1 else []
