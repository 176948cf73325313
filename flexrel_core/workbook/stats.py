"""Paired comparisons over seeds: differences, 95 % intervals and the verdict they support.

Every method is run on the same seeds (same data split, same trained dense model, same budget), so
a comparison is the per-seed difference ``other - base`` and its mean. The interval is Student's
t-interval over seeds, ``mean ± t_{0.975, n-1} · sd / sqrt(n)``: with the 5 to 10 seeds a CPU
affords, a bootstrap over seeds has too few distinct resamples to be trusted, while the t-interval
is exact for normal differences and close to nominal for the mildly skewed differences of
accuracies (``tests/workbook/test_stats.py`` checks its coverage on synthetic data). One seed gives
no interval (NaN bounds); identical differences on every seed give a zero-width interval.

**Robust or marginal.** A verdict read off an interval (``direction``) can turn on a rerun: another
CPU rounds float32 sums in another order, training amplifies the last bits, and the per-seed
numbers move as if the seeds' training noise were drawn again. ``robustness`` calls a verdict
*robust* when it stays the same with the interval moved by ``MARGIN`` (half) of its half-width in
either direction, i.e. when the interval clears the reference by at least half its half-width
(``higher``/``lower``), or when the reference lies in the middle half of the interval (``no
detectable difference``); otherwise *marginal*. A verdict computed from several intervals (a claim
over thresholds, a map cell) is robust when no such move of its marginal parts changes it
(``robust_aggregate``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95
MARGIN = 0.5  # how far, in half-widths, an interval may move without turning a robust verdict


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, standard deviation, n and the two-sided t-interval of ``values`` (NaNs dropped)."""
    x = np.asarray([v for v in values if not (v is None or math.isnan(v))], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}


def paired_differences(
    df: pd.DataFrame,
    value: str,
    *,
    by: Sequence[str],
    method: str = "method",
    pair: str = "seed",
    base: str = "magnitude",
    others: Sequence[str] = ("flexrel", "relevance"),
) -> pd.DataFrame:
    """Per group of ``by``: the per-``pair`` difference ``value[other] - value[base]`` for each of
    ``others``, summarised by ``t_interval``. Pairs missing either side are left out.

    Columns: ``*by, comparison ("<other> - <base>"), n, mean, sd, ci_low, ci_high``."""
    rows = []
    for key, group in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        wide = group.pivot_table(index=pair, columns=method, values=value, aggfunc="first")
        for other in others:
            if base not in wide or other not in wide:
                continue
            diff = (wide[other] - wide[base]).dropna()
            rows.append(dict(zip(by, key, strict=True)) | {"comparison": f"{other} - {base}"} | t_interval(diff))
    columns = [*by, "comparison", "n", "mean", "sd", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def direction(ci_low: float, ci_high: float, ref: float = 0.0) -> str:
    """What an interval of ``other - base`` supports against ``ref`` (default 0): ``"higher"``
    (entirely above it), ``"lower"`` (entirely below), ``"no detectable difference"`` (contains it),
    or ``"undetermined"`` (no interval)."""
    if _missing(ci_low) or _missing(ci_high):
        return "undetermined"
    if ci_low > ref:
        return "higher"
    if ci_high < ref:
        return "lower"
    return "no detectable difference"


def possible_directions(ci_low: float, ci_high: float, ref: float = 0.0, margin: float = MARGIN) -> set[str]:
    """Every ``direction`` the interval gives when moved by up to ``margin`` of its half-width either way
    (``direction`` is monotone in the move, so the two extremes and the interval itself cover them)."""
    if _missing(ci_low) or _missing(ci_high):
        return {"undetermined"}
    move = margin * (ci_high - ci_low) / 2
    return {direction(ci_low + s, ci_high + s, ref) for s in (-move, 0.0, move)}


def robustness(ci_low: float, ci_high: float, ref: float = 0.0, margin: float = MARGIN) -> str:
    """``"robust"`` when the interval's verdict (``direction``) survives a move of ``margin`` of its
    half-width either way -- it clears ``ref`` by at least that much, or ``ref`` lies at least that far
    inside it -- else ``"marginal"``; ``"undetermined"`` without an interval (module docstring)."""
    found = possible_directions(ci_low, ci_high, ref, margin)
    if found == {"undetermined"}:
        return "undetermined"
    return "robust" if len(found) == 1 else "marginal"


def robust_aggregate(
    verdict: Callable[[Sequence[str]], object],
    intervals: Sequence[tuple[float, float]],
    ref: float = 0.0,
    margin: float = MARGIN,
) -> str:
    """Whether a verdict computed from the directions of several intervals (``verdict(directions)``,
    e.g. a claim over thresholds) is robust: ``"robust"`` when it is the same for every combination of
    the directions each interval can take when moved by ``margin`` of its half-width
    (``possible_directions``), else ``"marginal"``."""
    options = [sorted(possible_directions(lo, hi, ref, margin)) for lo, hi in intervals]
    outcomes = {verdict(list(combo)) for combo in itertools.product(*options)}
    return "robust" if len(outcomes) == 1 else "marginal"


def labelled(verdict: str, robust: str) -> str:
    """A verdict as the report writes it: ``"holds"`` when robust, ``"holds (marginal)"`` when not."""
    return f"{verdict} (marginal)" if robust == "marginal" else verdict


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def format_interval(mean: float, low: float, high: float, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """``+1.23 [0.45, 2.01] unit`` (signed mean and its interval, times ``scale``)."""
    if math.isnan(mean):
        return "—"
    bounds = "" if math.isnan(low) else f" [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    return f"{scale * mean:+.{digits}f}{bounds}{(' ' + unit) if unit else ''}"
