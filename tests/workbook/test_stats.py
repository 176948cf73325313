"""Paired statistics: the t-interval covers the true mean at about the nominal rate, paired
differences equal hand-computed values, and the verdict follows the interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flexrel_core.workbook.stats import direction, format_interval, paired_differences, t_interval


@pytest.mark.parametrize(("n", "skewed"), [(5, False), (10, False), (5, True)])
def test_t_interval_covers_the_true_mean_at_about_the_nominal_rate(n, skewed):
    rng = np.random.default_rng(0)
    reps, hits = 4000, 0
    for _ in range(reps):
        # differences of accuracies: normal, or skewed (a gamma with mean 0.02, shifted to mean 0.01)
        x = rng.gamma(4.0, 0.005, n) - 0.01 if skewed else rng.normal(0.01, 0.02, n)
        r = t_interval(x)
        hits += r["ci_low"] <= 0.01 <= r["ci_high"]
    low = 0.91 if skewed else 0.935  # skewed data: the t-interval is close to, not at, nominal
    assert low <= hits / reps <= 0.965


def test_t_interval_by_hand():
    r = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975,4} * sd / sqrt(n)
    assert r["mean"] == 3.0 and r["sd"] == pytest.approx(math.sqrt(2.5)) and r["n"] == 5
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((3 - half, 3 + half))
    one = t_interval([0.4])
    assert one["mean"] == 0.4 and math.isnan(one["ci_low"]) and math.isnan(one["sd"])
    same = t_interval([0.1, 0.1, 0.1])
    assert same["ci_low"] == pytest.approx(0.1) and same["ci_high"] == pytest.approx(0.1)


def test_paired_differences_on_a_hand_made_table():
    rows = []
    acc = {"magnitude": [0.90, 0.80, 0.70], "flexrel": [0.92, 0.83, 0.70], "relevance": [0.5, 0.5, math.nan]}
    for method, values in acc.items():
        for seed, a in enumerate(values):
            rows.append({"p": 0.9, "method": method, "seed": seed, "acc": a})
    d = paired_differences(pd.DataFrame(rows), "acc", by=["p"]).set_index("comparison")
    assert d.loc["flexrel - magnitude", "mean"] == pytest.approx((0.02 + 0.03 + 0.0) / 3)
    assert d.loc["flexrel - magnitude", "n"] == 3
    assert d.loc["relevance - magnitude", "n"] == 2  # the seed without a relevance value is left out
    assert d.loc["relevance - magnitude", "mean"] == pytest.approx((-0.4 - 0.3) / 2)


def test_direction_and_format():
    assert direction(0.1, 0.3) == "higher" and direction(-0.3, -0.1) == "lower"
    assert direction(-0.1, 0.2) == "no detectable difference" and direction(math.nan, math.nan) == "undetermined"
    assert format_interval(0.0123, 0.002, 0.0226, scale=100, unit="points") == "+1.23 [+0.20, +2.26] points"
    assert format_interval(math.nan, math.nan, math.nan) == "—"


def test_a_difference_is_robust_when_its_interval_clears_the_reference_by_its_half_width():
    from flexrel_core.workbook.stats import possible_directions, robustness

    # half-width 1: a robust "higher" needs its low end at or above 1 (moved down by 1, it still excludes 0)
    assert robustness(1.0, 3.0) == "robust" and robustness(0.9, 2.9) == "marginal"
    assert robustness(-3.0, -1.0) == "robust" and robustness(-2.9, -0.9) == "marginal"
    # no detectable difference is never robust, however central 0 lies
    assert robustness(-1.0, 1.0) == "marginal" and robustness(-0.5, 2.0) == "marginal"
    assert possible_directions(-0.5, 2.0) == {"no detectable difference", "higher"}
    assert possible_directions(-1.0, 1.0) == {"no detectable difference", "higher", "lower"}
    assert possible_directions(0.9, 2.9) == {"higher", "no detectable difference"}
    assert possible_directions(1.0, 3.0) == {"higher"}
    # against another reference (a saving above 35 %): the same rule around it
    assert robustness(0.36, 0.40, ref=0.35) == "marginal" and robustness(0.38, 0.40, ref=0.35) == "robust"
    # too few pairs: never robust; zero-width intervals (every seed the same difference); none at all
    assert robustness(1.0, 3.0, n=4) == "marginal" and robustness(1.0, 3.0, n=5) == "robust"
    assert robustness(0.01, 0.01) == "robust" and robustness(0.0, 0.0) == "marginal"
    assert robustness(math.nan, math.nan) == "undetermined"


def test_an_aggregate_verdict_is_robust_when_no_marginal_part_can_turn_it():
    from flexrel_core.workbook.stats import labelled, robust_aggregate

    def every_higher(directions):
        return all(d == "higher" for d in directions)

    assert robust_aggregate(every_higher, [(1.0, 3.0), (2.0, 4.0)]) == "robust"
    assert robust_aggregate(every_higher, [(1.0, 3.0), (0.5, 2.5)]) == "marginal"
    assert robust_aggregate(every_higher, [(1.0, 3.0), (2.0, 4.0, 3)]) == "marginal"  # 3 pairs only

    def any_higher(directions):
        return "higher" in directions

    # one robust "higher" carries "any higher" whatever the marginal part does
    assert robust_aggregate(any_higher, [(1.0, 3.0), (-0.4, 1.6)]) == "robust"
    assert robust_aggregate(any_higher, [(0.5, 2.5), (-1.0, 0.5)]) == "marginal"
    assert labelled("holds", "marginal") == "holds (marginal)" and labelled("holds", "robust") == "holds"
