"""Small pure statistics over per-seed results (scipy underneath).

Every function takes a sequence of numbers (one per seed) and returns plain floats;
an undefined quantity (too few values, zero spread, non-finite input) is ``nan``,
never an exception, so callers can write it as an empty cell.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st
from scipy.optimize import brentq

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
    out = {"delta": mean(x) - mean(y), "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "df": math.nan}
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


# --------------------------------------------------------------------------- comparisons

N_RESAMPLES = 2000  # bootstrap resamples of P(improvement)
WILCOXON_MIN_PAIRS = 6  # below this the signed-rank test cannot reach p < 0.05


def _finite(values: Mapping[int, float]) -> dict[int, float]:
    """``seed -> value`` without the missing/non-finite values."""
    out = {}
    for seed, value in values.items():
        v = math.nan if value is None else float(value)
        if math.isfinite(v):
            out[int(seed)] = v
    return out


def _paired_t(x: np.ndarray, y: np.ndarray, confidence: float) -> dict[str, float]:
    """Paired t-test of mean(x - y) (scipy ttest_rel) with its confidence interval, and d_z."""
    out = {"ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "effect_size": math.nan}
    diff = x - y
    sd = float(diff.std(ddof=1))
    if sd / math.sqrt(diff.size) < _TINY:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_rel(x, y)
        ci = res.confidence_interval(confidence)
    out.update(
        ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(res.pvalue), effect_size=float(diff.mean()) / sd
    )
    return out


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float:
    """Pooled standard deviation sqrt(((n1-1)s1² + (n2-1)s2²) / (n1+n2-2)); nan unless both n >= 2."""
    x, y = _array(a), _array(b)
    if x.size < 2 or y.size < 2:
        return math.nan
    return math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Hedges' g of ``mean(a) - mean(b)``: Cohen's d (pooled SD) times the exact small-sample
    correction J(df) = Γ(df/2) / (√(df/2) Γ((df-1)/2)), df = n1 + n2 - 2 (Hedges 1981)."""
    x, y = _array(a), _array(b)
    sd = pooled_sd(x, y)
    if not sd > _TINY:
        return math.nan
    df = x.size + y.size - 2
    j = math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)
    return j * (float(x.mean()) - float(y.mean())) / sd


def _wilcoxon(diff: np.ndarray) -> float:
    if diff.size < WILCOXON_MIN_PAIRS or not np.any(np.abs(diff) > _TINY):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_st.wilcoxon(diff).pvalue)


def _improved_pairs(v, r, axis=-1):
    """Share of seed pairs with v > r (ties count one half), vectorised for scipy.stats.bootstrap."""
    return np.mean((v > r) + 0.5 * (v == r), axis=axis)


def _improved_cross(v, r, axis=-1):
    """Share of all (variant seed, reference seed) pairs with v > r, ties one half (= U / n1 n2)."""
    v, r = np.moveaxis(v, axis, -1), np.moveaxis(r, axis, -1)
    diff = v[..., :, None] - r[..., None, :]
    return np.mean((diff > 0) + 0.5 * (diff == 0), axis=(-2, -1))


def prob_improvement(
    v: Sequence[float], r: Sequence[float], *, paired: bool, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, float]:
    """P(variant > reference) over seed pairs and its BCa bootstrap CI (scipy.stats.bootstrap, ``rng=seed``).

    Paired: over the pairs (v[i], r[i]); unpaired: over all cross pairs. The CI is nan for fewer than two
    values a side and when the bootstrap degenerates (e.g. every pair agrees).
    """
    x, y = _array(v), _array(r)
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    func = _improved_pairs if paired else _improved_cross
    point = float(func(x, y))
    if x.size < 2 or y.size < 2:
        return point, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _st.bootstrap(
            (x, y),
            func,
            paired=paired,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _root(excess, start: float, limit: float) -> float:
    """Where the increasing function ``excess`` crosses 0, at or above ``start``: doubling up to ``limit``
    for a bracket, then brentq. ``start`` when it is already >= 0 there, nan when never below ``limit``."""
    if excess(start) >= 0:
        return start
    high = start
    while excess(high) < 0:
        if high > limit:
            return math.nan
        high *= 2
    return float(brentq(excess, max(start, high / 2), high, xtol=1e-12, rtol=1e-12))


def _power(es: float, n: float, n_ref: float | None, alpha: float) -> float:
    """Power of the two-sided t-test (statsmodels TTestPower paired, TTestIndPower with ``n_ref``).

    statsmodels' nctdtr gives nan for the opposite tail at large effects, where that tail is < 1e-6:
    there the power is the near tail alone, scipy.stats.nct.sf.
    """
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if n_ref is None:
        value, df, nc = TTestPower().power(es, n, alpha), n - 1, es * math.sqrt(n)
    else:
        value = TTestIndPower().power(es, n, alpha, ratio=n_ref / n)
        df, nc = n + n_ref - 2, es * math.sqrt(n * n_ref / (n + n_ref))
    value = float(value)
    return value if math.isfinite(value) else float(_st.nct.sf(_st.t.isf(alpha / 2, df), df, nc))


@functools.lru_cache(maxsize=256)
def _mde_effect(n: int, n_ref: int | None, alpha: float, power: float) -> float:
    """The standardised minimum detectable effect: it depends on the design only (cached)."""
    return _root(lambda es: _power(es, n, n_ref, alpha) - power, 1e-3, 1e6)


def power_analysis(
    sd: float, delta: float, n: int, n_ref: int | None = None, *, alpha: float = 0.05, power: float = 0.8
) -> tuple[float, float]:
    """``(mde, seeds_needed)`` of a two-sided t-test at level ``alpha`` and ``power``.

    Paired (``n_ref`` None): ``sd`` is the SD of the differences, ``n`` pairs (statsmodels TTestPower).
    Unpaired: ``sd`` is the pooled SD, ``n`` and ``n_ref`` seeds (TTestIndPower). ``mde`` is the minimum
    detectable |Δ| (standardised effect × sd); ``seeds_needed`` the seeds (per side, equal sides) at which
    the observed |Δ| reaches ``power`` (ceil, at least 2). Both nan where undefined (zero spread, n < 2,
    Δ = 0). The roots are found with brentq on statsmodels' power function, which is what its
    solve_power does but without its failures (it returns a bracket bound such as 10.0 for 2–3 seeds).
    """
    if not (sd > _TINY) or n < 2 or (n_ref is not None and n_ref < 2):
        return math.nan, math.nan
    mde = _mde_effect(n, n_ref, alpha, power) * sd
    es = abs(delta) / sd
    if not (es > 0 and math.isfinite(es)):
        return mde, math.nan
    needed = _root(lambda m: _power(es, m, None if n_ref is None else m, alpha) - power, 2.0, 1e13)
    return mde, float(math.ceil(needed - 1e-9)) if math.isfinite(needed) else math.nan


def _empty_comparison() -> dict[str, Any]:
    nan = math.nan
    return {
        "test": "",
        "n_pairs": 0,
        "delta": nan,
        "ci_low": nan,
        "ci_high": nan,
        "p_value": nan,
        "p_value_wilcoxon": nan,
        "effect_size": nan,
        "effect_size_kind": "",
        "prob_improvement": nan,
        "prob_improvement_ci_low": nan,
        "prob_improvement_ci_high": nan,
        "mde_acc": nan,
        "seeds_needed": nan,
    }


def compare(
    variant: Mapping[int, float],
    reference: Mapping[int, float],
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    looks: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare a variant with its reference from their per-seed accuracies (``seed -> accuracy``).

    Paired t-test on the seeds both sides share when there are at least two (the seed fixes data order
    and augmentation, so a seed's two runs are a matched pair); otherwise Welch's t-test on all values.
    Intervals are at level 1 - alpha/looks. Keys: ``test`` ("paired_t" | "welch" | "" without values on
    both sides), ``n_pairs`` (shared seeds), ``delta``, ``ci_low``, ``ci_high``, ``p_value`` (raw),
    ``p_value_wilcoxon`` (signed-rank, n_pairs >= 6), ``effect_size`` / ``effect_size_kind`` ("d_z" paired,
    "hedges_g" Welch), ``prob_improvement`` with ``prob_improvement_ci_low/_high``, ``mde_acc`` and
    ``seeds_needed`` (:func:`power_analysis` at level alpha/looks). Undefined values are nan.
    """
    v, r = _finite(variant), _finite(reference)
    out = _empty_comparison()
    if not v or not r:
        return out
    level, confidence = alpha / looks, 1 - alpha / looks
    shared = sorted(set(v) & set(r))
    out["n_pairs"] = len(shared)
    if len(shared) >= 2:
        x, y = _array([v[s] for s in shared]), _array([r[s] for s in shared])
        diff = x - y
        out.update(test="paired_t", delta=float(diff.mean()), effect_size_kind="d_z", **_paired_t(x, y, confidence))
        out["p_value_wilcoxon"] = _wilcoxon(diff)
        sd, n_ref = std(diff), None
    else:
        x, y = _array(list(v.values())), _array(list(r.values()))
        w = welch(x, y, confidence)
        out.update(
            test="welch",
            delta=w["delta"],
            ci_low=w["ci_low"],
            ci_high=w["ci_high"],
            p_value=w["p_value"],
            effect_size=hedges_g(x, y),
            effect_size_kind="hedges_g",
        )
        sd, n_ref = pooled_sd(x, y), y.size
    p, low, high = prob_improvement(x, y, paired=n_ref is None, confidence=confidence, seed=seed)
    out.update(prob_improvement=p, prob_improvement_ci_low=low, prob_improvement_ci_high=high)
    out["mde_acc"], out["seeds_needed"] = power_analysis(sd, out["delta"], x.size, n_ref, alpha=level, power=power)
    return out


def paired_delta(variant: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Δ as :func:`compare` measures it, without the test: the mean of the per-seed differences over the
    shared seeds (at least two), else the difference of the means; nan without values on both sides."""
    v, r = _finite(variant), _finite(reference)
    shared = sorted(set(v) & set(r))
    if len(shared) >= 2:
        return mean([v[s] - r[s] for s in shared])
    return mean(v.values()) - mean(r.values()) if v and r else math.nan


def _adjust(pvalues: Sequence[float], adjust) -> list[float]:
    p = np.asarray([math.nan if v is None else float(v) for v in pvalues], dtype=float)
    out = np.full(p.shape, math.nan)
    keep = np.isfinite(p)
    if keep.any():
        out[keep] = adjust(p[keep])
    return [float(v) for v in out]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (statsmodels multipletests "holm"); nan in, nan out and
    excluded from the family."""
    from statsmodels.stats.multitest import multipletests

    return _adjust(pvalues, lambda p: multipletests(p, method="holm")[1])


def bh(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg q-values (scipy.stats.false_discovery_control) over the non-nan p-values."""
    return _adjust(pvalues, lambda p: _st.false_discovery_control(p, method="bh"))


def verdict(
    p_value_holm: float | None, mde_acc: float, *, alpha: float = 0.05, looks: int = 1, min_effect: float = 0.01
) -> str:
    """``significant`` when the Holm p-value < alpha/looks; else ``no_effect`` when the minimum detectable
    effect is <= ``min_effect``; else ``undecided`` (also when both are nan: too few seeds to tell).
    ``""`` when ``p_value_holm`` is None (no comparison: an experiment without a reference)."""
    if p_value_holm is None:
        return ""
    p = float(p_value_holm)
    if math.isfinite(p) and p < alpha / looks:
        return "significant"
    m = float(mde_acc) if mde_acc is not None else math.nan
    if math.isfinite(m) and m <= min_effect:
        return "no_effect"
    return "undecided"
