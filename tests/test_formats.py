"""ablationlab.formats: one writer per kind of number, one missing-value check, one "diverged"."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from ablationlab import formats

PACKAGE = Path(formats.__file__).resolve().parent


@pytest.mark.parametrize("value", [None, math.nan, float("nan"), pd.NA])
def test_missing_values_are_written_as_a_dash(value):
    assert formats.missing(value)
    assert {formats.pct(value), formats.pp(value), formats.pvalue(value), formats.integer(value)} == {"–"}
    assert {formats.number(value), formats.number_text(value), formats.seconds(value)} == {"–"}


def test_each_kind_of_number():
    assert (formats.pct(0.9731), formats.pct(0.9731, 2)) == ("97.3", "97.31")
    assert (formats.pp(0.018), formats.pp(-0.0001), formats.pp(0.021, signed=False)) == ("+1.8", "±0.0", "2.1")
    assert (formats.pvalue(0.0004), formats.pvalue(0.0123)) == ("<0.001", "0.012")
    assert (formats.integer(1437), formats.number_text(14.0), formats.number_text(14.25)) == ("1,437", "14", "14.2")
    assert (formats.seconds(12.5), formats.seconds(192), formats.seconds(7560)) == ("12.5 s", "3.2 min", "2.1 h")
    assert (formats.plural(1, "seed"), formats.plural(3, "seed")) == ("1 seed", "3 seeds")
    assert formats.value_text([{"name": "hflip", "p": 0.5}]) == "hflip(p=0.5)"
    assert [formats.value_text(v) for v in (True, None, 1e-3, [1, 2])] == ["true", "null", "0.001", "[1, 2]"]


def test_diverged_reads_the_summary_status():
    assert formats.diverged({"status": "diverged"}) and formats.diverged(pd.Series({"status": "diverged (1/3)"}))
    assert not formats.diverged({"status": "finished"}) and not formats.diverged({"status": None})
    assert not formats.diverged({"status": "diverged (1/3)"}, every=True)
    assert formats.diverged({"status": "diverged"}, every=True)


def test_no_other_module_or_template_decides_divergence_or_writes_points_by_hand():
    sources = [*PACKAGE.glob("*.py"), *PACKAGE.glob("templates/*.j2")]
    for path in sources:
        if path.name == "formats.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert 'startswith("diverged")' not in text, path.name
        assert not re.search(r"\* 100:[+.]", text), path.name  # a fraction written as % or pp by hand
        assert not re.search(r"def _(missing|absent|pp|epoch)\(", text), path.name
