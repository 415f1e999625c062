"""Names in the pipeline's results tree shared by the workflow and the stages that read it.

A train job trains a block of seeds of one experiment (:func:`seed_blocks`: the study's seeds, or
a block that adaptive seeding adds); its log and benchmark files are named after the block:
``results/logs/train/{experiment}/seed0-1-2.log`` (``seed3.log`` for a block of one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

_STEM = re.compile(r"seed(\d+(?:-\d+)*)")


def job_stem(seeds: Sequence[int]) -> str:
    """The file stem of the train job of ``seeds``: ``seed0-1-2``."""
    return "seed" + "-".join(str(int(s)) for s in seeds)


def stem_seeds(stem: str) -> list[int]:
    """The seeds a train job's file stem names ([] when it names none)."""
    match = _STEM.fullmatch(stem)
    return [int(s) for s in match.group(1).split("-")] if match else []


def job_log(logs_dir: str | Path, experiment: str, seed: int) -> Path | None:
    """The log of the train job that trained ``experiment``'s ``seed`` (None when there is none)."""
    for path in sorted(Path(logs_dir, experiment).glob("seed*.log")):
        if seed in stem_seeds(path.stem):
            return path
    return None


def seed_sequence(seeds: Sequence[int], max_seeds: int) -> list[int]:
    """Adaptive seeding's seeds: the study's, then the integers after the largest, ``max_seeds`` in all."""
    extra = range(max(seeds) + 1, max(seeds) + 1 + max(max_seeds - len(seeds), 0))
    return list(seeds) + list(extra)


def seed_blocks(seeds: Sequence[int], adaptive: dict | None = None) -> list[list[int]]:
    """The blocks of seeds that train jobs train: the study's ``seeds``, then, with adaptive seeding (its
    ``max_seeds`` and ``step``), each block of ``step`` seeds of :func:`seed_sequence` a look may add (an
    experiment's seeds are always the study's plus whole blocks: adaptive.next_seeds)."""
    blocks = [list(seeds)]
    if adaptive:
        rest = seed_sequence(seeds, adaptive["max_seeds"])[len(seeds) :]
        blocks += [rest[i : i + adaptive["step"]] for i in range(0, len(rest), adaptive["step"])]
    return blocks
