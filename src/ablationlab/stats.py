"""Small pure statistics over per-seed results (scipy underneath).

Every function takes a sequence of numbers (one per seed) and returns plain floats;
an undefined quantity (too few values, zero spread, non-finite input) is ``nan``,
never an exception, so callers can write it as an empty cell.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
_TINY = 1e-12  # standard errors below this count as zero spread


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=float)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; nan when empty or when any value is not finite."""
    x = _array(values)
    return float(x.mean()) if x.size and np.isfinite(x).all() else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); nan for fewer than two values."""
    x = _array(values)
    return float(x.std(ddof=1)) if x.size >= 2 and np.isfinite(x).all() else math.nan


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean: mean ± t(1-α/2, n-1)·s/√n.

    ``(nan, nan)`` for fewer than two values; ``(mean, mean)`` when all values agree.
    """
    x = _array(values)
    if x.size < 2 or not np.isfinite(x).all():
        return math.nan, math.nan
    m, sem = float(x.mean()), float(_st.sem(x))
    if sem < _TINY:
        return m, m
    low, high = _st.t.interval(confidence, x.size - 1, loc=m, scale=sem)
    return float(low), float(high)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Welch's t-test of ``mean(a) - mean(b)`` (unequal variances).

    Returns ``delta`` (difference of means; defined whenever both means are),
    ``ci_low``/``ci_high`` (Welch confidence interval of the difference), ``p_value``
    (two-sided) and ``df`` (Welch–Satterthwaite). All but ``delta`` are nan unless both
    samples have at least two finite values and their pooled standard error is non-zero.
    """
    x, y = _array(a), _array(b)
    out = {"delta": mean(x) - mean(y), "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "df": math.nan}
    if x.size < 2 or y.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return out
    se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    if se < _TINY:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_ind(x, y, equal_var=False)
        ci = res.confidence_interval(confidence)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(res.pvalue), df=float(res.df))
    return out


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """``n``, ``mean``, ``std``, ``ci_low``, ``ci_high``, ``min``, ``max`` of ``values``."""
    x = _array(values)
    finite = x.size > 0 and bool(np.isfinite(x).all())
    low, high = t_interval(x, confidence)
    return {
        "n": int(x.size),
        "mean": mean(x),
        "std": std(x),
        "ci_low": low,
        "ci_high": high,
        "min": float(x.min()) if finite else math.nan,
        "max": float(x.max()) if finite else math.nan,
    }
