"""Paired comparisons over seeds: differences, 95 % intervals and the verdict they support.

Every method is run on the same seeds (same data split, same trained dense model, same budget), so
a comparison is the per-seed difference ``other - base`` and its mean. The interval is Student's
t-interval over seeds, ``mean ± t_{0.975, n-1} · sd / sqrt(n)``: with the 5 to 10 seeds a CPU
affords, a bootstrap over seeds has too few distinct resamples to be trusted, while the t-interval
is exact for normal differences and close to nominal for the mildly skewed differences of
accuracies (``tests/workbook/test_stats.py`` checks its coverage on synthetic data). One seed gives
no interval (NaN bounds); identical differences on every seed give a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95


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


def direction(ci_low: float, ci_high: float) -> str:
    """What an interval of ``other - base`` supports: ``"higher"`` (entirely above 0), ``"lower"``
    (entirely below 0), ``"no detectable difference"`` (contains 0), or ``"undetermined"`` (no interval)."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "undetermined"
    if ci_low > 0:
        return "higher"
    if ci_high < 0:
        return "lower"
    return "no detectable difference"


def format_interval(mean: float, low: float, high: float, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """``+1.23 [0.45, 2.01] unit`` (signed mean and its interval, times ``scale``)."""
    if math.isnan(mean):
        return "—"
    bounds = "" if math.isnan(low) else f" [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    return f"{scale * mean:+.{digits}f}{bounds}{(' ' + unit) if unit else ''}"
