"""stats.compare / holm / bh / verdict against independent computations.

References: scipy.stats (ttest_rel, ttest_ind, wilcoxon, mannwhitneyu, false_discovery_control),
statsmodels (multipletests, TTestPower, TTestIndPower) and published worked examples: Lakens (2013),
"Calculating and reporting effect sizes", Front. Psychol. 4:863, Table 1 (movie ratings of 10 people:
d_s = 1.13, g_s = 1.08, d_z = 1.50, paired t(9) = 4.74, p = .001); Benjamini & Hochberg (1995), JRSS B
57:289, section 4.2 (15 p-values, 4 rejected at q = 0.05).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from ablationlab import stats

MOVIE_1 = [9, 7, 8, 9, 8, 9, 9, 10, 9, 9]  # Lakens (2013), Table 1
MOVIE_2 = [9, 6, 7, 8, 7, 9, 8, 8, 8, 7]
BH_1995 = [
    0.0001,
    0.0004,
    0.0019,
    0.0095,
    0.0201,
    0.0278,
    0.0298,
    0.0344,
    0.0459,
    0.3240,
    0.4262,
    0.5719,
    0.6528,
    0.7590,
    1.000,
]


def seeds(values, start=0):
    return {start + i: v for i, v in enumerate(values)}


# ----------------------------------------------------------------------------- test choice


def test_shared_seeds_give_the_paired_t_test():
    v, r = [0.91, 0.93, 0.92, 0.95], [0.90, 0.90, 0.91, 0.92]
    res = stats.compare(seeds(v), seeds(r))
    ref = st.ttest_rel(v, r)
    ci = ref.confidence_interval(0.95)
    assert res["test"] == "paired_t" and res["n_pairs"] == 4
    assert res["delta"] == pytest.approx(np.mean(v) - np.mean(r))
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high))
    # the paired test is stronger than Welch on the same numbers (the seed effect cancels)
    assert res["p_value"] < st.ttest_ind(v, r, equal_var=False).pvalue


def test_only_the_shared_seeds_are_paired():
    v, r = {0: 0.91, 1: 0.93, 2: 0.92, 5: 0.5}, {0: 0.90, 1: 0.90, 2: 0.91, 7: 0.99}
    res = stats.compare(v, r)
    ref = st.ttest_rel([0.91, 0.93, 0.92], [0.90, 0.90, 0.91])
    assert res["test"] == "paired_t" and res["n_pairs"] == 3
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert res["delta"] == pytest.approx(np.mean([0.01, 0.03, 0.01]))


@pytest.mark.parametrize("ref_seeds", [(10, 11, 12), (0, 11, 12)])  # none or one seed shared
def test_fewer_than_two_shared_seeds_give_welch(ref_seeds):
    v, r = [0.71, 0.74, 0.69, 0.75], [0.70, 0.66, 0.69]
    res = stats.compare(seeds(v), dict(zip(ref_seeds, r)))
    ref = st.ttest_ind(v, r, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert res["test"] == "welch" and res["n_pairs"] == len({0, 1, 2, 3} & set(ref_seeds))
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert res["effect_size_kind"] == "hedges_g" and math.isnan(res["p_value_wilcoxon"])


def test_ci_level_is_split_over_the_planned_looks():
    v, r = [0.91, 0.93, 0.92, 0.95], [0.90, 0.90, 0.91, 0.92]
    res = stats.compare(seeds(v), seeds(r), alpha=0.05, looks=3)
    ci = st.ttest_rel(v, r).confidence_interval(1 - 0.05 / 3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert res["ci_low"] < stats.compare(seeds(v), seeds(r))["ci_low"]  # wider than the 95 % one


def test_wilcoxon_only_from_six_pairs():
    rng = np.random.default_rng(3)
    r = rng.normal(0.9, 0.01, 6)
    v = r + rng.normal(0.005, 0.004, 6)
    assert math.isnan(stats.compare(seeds(v[:5]), seeds(r[:5]))["p_value_wilcoxon"])
    res = stats.compare(seeds(v), seeds(r))
    assert res["p_value_wilcoxon"] == pytest.approx(st.wilcoxon(v - r).pvalue)
    up = stats.compare(seeds(r + np.arange(1, 7) / 1000), seeds(r))  # 6 of 6 pairs better: exact p = 2 / 2^6
    assert up["p_value_wilcoxon"] == pytest.approx(2 / 2**6)


# ----------------------------------------------------------------------------- effect sizes


def test_effect_sizes_reproduce_lakens_2013():
    assert stats.hedges_g(MOVIE_1, MOVIE_2) == pytest.approx(1.08, abs=0.005)
    assert stats.hedges_g(MOVIE_1, MOVIE_2) / stats.pooled_sd(MOVIE_1, MOVIE_2) > 0
    assert (np.mean(MOVIE_1) - np.mean(MOVIE_2)) / stats.pooled_sd(MOVIE_1, MOVIE_2) == pytest.approx(1.13, abs=0.005)
    paired = stats.compare(seeds(MOVIE_1), seeds(MOVIE_2))
    assert paired["effect_size_kind"] == "d_z" and paired["effect_size"] == pytest.approx(1.50, abs=0.005)
    assert paired["p_value"] == pytest.approx(0.001, abs=0.0005)
    welch = stats.compare(seeds(MOVIE_1), seeds(MOVIE_2, start=100))
    assert welch["effect_size_kind"] == "hedges_g" and welch["effect_size"] == pytest.approx(1.08, abs=0.005)


def test_effect_sizes_by_their_formulas():
    a, b = np.array([0.81, 0.84, 0.80]), np.array([0.78, 0.79, 0.74, 0.77])
    n1, n2 = len(a), len(b)
    sp = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    df = n1 + n2 - 2
    j = math.gamma(df / 2) / (math.sqrt(df / 2) * math.gamma((df - 1) / 2))
    assert stats.hedges_g(a, b) == pytest.approx(j * (a.mean() - b.mean()) / sp)
    assert j == pytest.approx(1 - 3 / (4 * df - 1), abs=0.01)  # the usual approximation
    d = a - b[:3]
    assert stats.compare(seeds(a), seeds(b[:3]))["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))


def test_probability_of_improvement():
    paired = stats.compare(seeds(MOVIE_1), seeds(MOVIE_2))
    assert paired["prob_improvement"] == pytest.approx((8 + 0.5 * 2) / 10)  # 8 better, 2 ties
    v, r = [0.71, 0.74, 0.69, 0.75], [0.70, 0.66, 0.69]
    welch = stats.compare(seeds(v), seeds(r, start=10))
    u = st.mannwhitneyu(v, r).statistic  # U counts pairs with v > r, ties one half
    assert welch["prob_improvement"] == pytest.approx(u / (len(v) * len(r)))
    for res in (paired, welch):
        assert 0 <= res["prob_improvement_ci_low"] <= res["prob_improvement"] <= res["prob_improvement_ci_high"] <= 1


def test_bootstrap_ci_is_reproducible_under_a_seed():
    rng = np.random.default_rng(0)
    r = rng.normal(0.9, 0.01, 8)
    v = r + rng.normal(0.002, 0.01, 8)

    def ci(seed, paired=True):
        return stats.prob_improvement(v, r, paired=paired, seed=seed)

    assert ci(1) == ci(1) and ci(1, False) == ci(1, False)
    assert ci(1, False)[1:] != ci(2, False)[1:]  # the seed is what fixes it
    res = st.bootstrap(
        (v, r),
        lambda x, y, axis=-1: np.mean((x > y) + 0.5 * (x == y), axis=axis),
        paired=True,
        n_resamples=stats.N_RESAMPLES,
        rng=np.random.default_rng(1),
        method="BCa",
    )
    assert ci(1)[1:] == pytest.approx((res.confidence_interval.low, res.confidence_interval.high))


def test_degenerate_bootstrap_gives_nan_not_an_error():
    p, low, high = stats.prob_improvement([0.9, 0.91, 0.92], [0.8, 0.81, 0.82], paired=True)
    assert p == 1.0 and math.isnan(low) and math.isnan(high)


# ----------------------------------------------------------------------------- multiple comparisons


def test_holm_on_known_vectors():
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # 4·0.005, 3·0.01, max(2·0.03, 0.04)
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert stats.holm(BH_1995) == pytest.approx(list(multipletests(BH_1995, method="holm")[1]))
    assert stats.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1


def test_bh_on_known_vectors():
    q = stats.bh(BH_1995)
    assert sum(v <= 0.05 for v in q) == 4  # the paper's four rejections
    assert q == pytest.approx(list(multipletests(BH_1995, method="fdr_bh")[1]))
    assert q == pytest.approx(list(st.false_discovery_control(BH_1995)))
    assert stats.bh([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_nan_is_left_out_of_the_family():
    p = [0.01, math.nan, 0.04, None, 0.03]
    holm, bh = stats.holm(p), stats.bh(p)
    assert math.isnan(holm[1]) and math.isnan(holm[3]) and math.isnan(bh[1]) and math.isnan(bh[3])
    assert [holm[i] for i in (0, 2, 4)] == pytest.approx(stats.holm([0.01, 0.04, 0.03]))
    assert [bh[i] for i in (0, 2, 4)] == pytest.approx(stats.bh([0.01, 0.04, 0.03]))
    assert stats.holm([]) == [] and math.isnan(stats.bh([math.nan])[0])


# ----------------------------------------------------------------------------- power


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mde_and_seeds_needed_match_statsmodels(n):
    sd, delta = 0.02, 0.015
    mde, needed = stats.power_analysis(sd, delta, n)
    assert mde == pytest.approx(
        TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8) * sd, rel=1e-5
    )
    want = TTestPower().solve_power(effect_size=delta / sd, nobs=None, alpha=0.05, power=0.8)
    assert needed == math.ceil(want)
    mde_u, needed_u = stats.power_analysis(sd, delta, n, n + 2)
    ind = TTestIndPower().solve_power(effect_size=None, nobs1=n, ratio=(n + 2) / n, alpha=0.05, power=0.8)
    assert mde_u == pytest.approx(ind * sd, rel=1e-5)
    assert needed_u == math.ceil(TTestIndPower().solve_power(effect_size=delta / sd, nobs1=None, alpha=0.05, power=0.8))


@pytest.mark.parametrize(("n", "alpha"), [(2, 0.05), (2, 0.01), (3, 0.001), (4, 0.0125)])
def test_power_where_statsmodels_solve_power_fails(n, alpha):
    """solve_power returns a bracket bound (e.g. 10.0) for 2–3 seeds at small alpha; the power at our
    answer is exactly the asked-for power by statsmodels' own power function."""
    mde, _ = stats.power_analysis(1.0, 0.5, n, alpha=alpha)
    assert TTestPower().power(mde, n, alpha) == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("delta", [0.004, 0.01, 0.02])
def test_seeds_needed_reach_the_power(delta):
    """A paired study with seeds_needed seeds reaches power >= 0.8 (statsmodels), one seed fewer does not."""
    rng = np.random.default_rng(7)
    r = rng.normal(0.9, 0.01, 3)
    v = r + delta + rng.normal(0, 0.008, 3)
    res = stats.compare(seeds(v), seeds(r))
    es = abs(res["delta"]) / np.std(v - r, ddof=1)
    k = int(res["seeds_needed"])
    assert TTestPower().power(es, k, 0.05) >= 0.8
    assert k == 2 or TTestPower().power(es, k - 1, 0.05) < 0.8
    assert res["mde_acc"] == pytest.approx(
        TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8) * np.std(v - r, ddof=1), rel=1e-5
    )


def test_power_is_undefined_without_spread_or_effect():
    assert all(math.isnan(x) for x in stats.power_analysis(0.0, 0.01, 5))
    assert all(math.isnan(x) for x in stats.power_analysis(0.01, 0.01, 1))
    mde, needed = stats.power_analysis(0.01, 0.0, 5)
    assert mde > 0 and math.isnan(needed)
    assert stats.power_analysis(0.01, 1.0, 5)[1] == 2  # a huge effect: the minimum of a t-test


# ----------------------------------------------------------------------------- verdict and nan


def test_verdict_categories():
    assert stats.verdict(0.01, 0.05) == "significant"
    assert stats.verdict(0.03, 0.05, looks=2) == "undecided"  # 0.03 >= 0.05 / 2
    assert stats.verdict(0.3, 0.008, min_effect=0.01) == "no_effect"
    assert stats.verdict(0.3, 0.02, min_effect=0.01) == "undecided"
    assert stats.verdict(math.nan, math.nan) == "undecided"  # too few seeds to tell
    assert stats.verdict(None, math.nan) == ""  # no comparison


def test_one_seed_zero_spread_and_missing_reference_are_nan():
    one = stats.compare({0: 0.9}, {0: 0.85})
    assert one["test"] == "welch" and one["delta"] == pytest.approx(0.05)
    assert all(math.isnan(one[k]) for k in ("p_value", "ci_low", "effect_size", "mde_acc", "seeds_needed"))
    flat = stats.compare({0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.85, 1: 0.85, 2: 0.85})
    assert flat["test"] == "paired_t" and flat["delta"] == pytest.approx(0.05)
    assert all(
        math.isnan(flat[k])
        for k in ("p_value", "ci_low", "ci_high", "effect_size", "mde_acc", "prob_improvement_ci_low")
    )
    assert flat["prob_improvement"] == 1.0
    for missing in ({}, {0: math.nan, 1: None}):
        res = stats.compare({0: 0.9, 1: 0.91}, missing)
        assert res["test"] == "" and res["effect_size_kind"] == "" and math.isnan(res["delta"])
    dropped = stats.compare({0: 0.9, 1: 0.91, 2: math.nan}, {0: 0.88, 1: 0.9, 2: 0.87})
    assert dropped["n_pairs"] == 2
    assert stats.verdict(one["p_value"], one["mde_acc"]) == "undecided"
