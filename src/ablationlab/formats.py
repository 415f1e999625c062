"""How the report, the figures and the stages' messages write a value: one function per kind of number,
the missing-value check they share, and whether a summary row counts as diverged.

A missing value (None, NaN, ``pd.NA``) is written ``–``. Accuracies are fractions 0–1 in the data
and percentages in the text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

MISSING = "–"
# a verdict of the summary (experiments.csv `verdict`) as the report and the console name it
VERDICT_NAMES = {"significant": "significant", "no_effect": "no effect", "undecided": "undecided"}


def missing(x: Any) -> bool:
    """Whether ``x`` is an undefined value: None, a NaN float or ``pd.NA``."""
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def diverged(row: Mapping[str, Any], *, every: bool = False) -> bool:
    """Whether a row of the summary has a diverged seed: a run's status ``diverged``, an experiment's
    ``diverged`` or ``diverged (k/n)`` (its ``n_diverged`` > 0); with ``every``, whether all its seeds
    diverged (status ``diverged``)."""
    status = str(row.get("status") or "")
    return status == "diverged" if every else status.startswith("diverged")


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage without the sign: 0.9731 → ``97.3``."""
    return MISSING if missing(x) else f"{float(x) * 100:.{digits}f}"


def pp(x: Any, digits: int = 1, *, signed: bool = True) -> str:
    """A difference of fractions in percentage points: 0.018 → ``+1.8`` (zero: ``±0.0``); a size
    (``signed=False``): ``1.8``."""
    if missing(x):
        return MISSING
    if not signed:
        return f"{float(x) * 100:.{digits}f}"
    text = f"{float(x) * 100:+.{digits}f}"
    return "±" + text[1:] if float(text) == 0 else text


def percent(x: float) -> str:
    """A probability set by the study (confidence level, power) as a percentage: 0.95 → ``95``, 0.975 → ``97.5``."""
    return f"{float(x) * 100:g}"


def pvalue(p: Any) -> str:
    """A p-value: ``0.012``, ``<0.001``."""
    if missing(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def integer(x: Any) -> str:
    """A count with thousands separators: ``1,437``."""
    return MISSING if missing(x) else f"{int(x):,}"


def number(x: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals."""
    return MISSING if missing(x) else f"{float(x):.{digits}f}"


def number_text(x: Any) -> str:
    """A count that may be a mean: ``14`` or ``14.5``."""
    return MISSING if missing(x) else f"{float(x):g}" if float(x) == int(float(x)) else f"{float(x):.1f}"


def seconds(x: Any) -> str:
    """A duration: ``12.5 s``, ``3.2 min``, ``2.1 h``."""
    if missing(x):
        return MISSING
    x = float(x)
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def plural(n: Any, word: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{integer(n)} {word}{'' if n == 1 else 's'}"


def value_text(value: Any) -> str:
    """A recipe value as short text: ``0.01``, ``true``, ``null``, augmentation lists as
    ``hflip(p=0.5), crop(...)``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return ", ".join(
            v["name"] + "(" + ", ".join(f"{k}={value_text(w)}" for k, w in v.items() if k != "name") + ")"
            for v in value
        )
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]" if value else "[]"
    return str(value)
