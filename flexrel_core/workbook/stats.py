"""Paired comparisons over seeds: differences, 95 % intervals and the verdict they support.

Every method is run on the same seeds (same data split, same trained dense model, same budget), so
a comparison is the per-seed difference ``other - base`` and its mean. The interval is Student's
t-interval over seeds, ``mean ± t_{0.975, n-1} · sd / sqrt(n)``: with the 5 to 10 seeds a CPU
affords, a bootstrap over seeds has too few distinct resamples to be trusted, while the t-interval
is exact for normal differences and close to nominal for the mildly skewed differences of
accuracies (``tests/workbook/test_stats.py`` checks its coverage on synthetic data). One seed gives
no interval (NaN bounds); identical differences on every seed give a zero-width interval.

**Robust or marginal.** A verdict read off an interval (``direction``) can turn on a rerun: another
CPU rounds sums in another order and training amplifies the last bits. Trained in float32, every
per-seed number moved as if the seeds' training noise were drawn again (two runs on two CPUs
differed by about one standard error of their difference); the workbook trains its dense models in
float64 (``config.TrainConfig.precision``), which keeps most of them bit for bit, but fine-tuning in
float32 and some longer trainings still move a few numbers, and a verdict at its interval's edge
turns with them.
``robustness`` calls a difference *robust* when its interval clears the reference by at least its
own half-width -- moved by a half-width either way it would still exclude the reference -- on at
least ``MIN_PAIRS`` paired seeds: a rerun then turns it rarely (about one time in twenty at that
edge, with 10 seeds, if every seed is drawn again). Every other verdict is *marginal*, ``no
detectable difference`` always: a rerun finds a difference one time in twenty even between
equivalent methods (the interval's 95 %), and more often when a small one exists. A verdict
computed from several intervals (a claim over thresholds, a map cell) is robust when no direction
its marginal parts can take changes it (``robust_aggregate``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95
MARGIN = 1.0  # how far, in half-widths, a robust difference's interval clears its reference
MIN_PAIRS = 5  # fewer paired seeds: the interval's own width is too uncertain to weigh a margin


# What "undetermined" means wherever a verdict or its robustness reads so.
UNDETERMINED = (
    "*Undetermined*: a claim without an interval -- fewer than 2 paired seeds give the difference (e.g. an "
    "accuracy target that only one seed's models reach), or a δ chosen on fewer than 3 seeds, which no "
    "leave-one-seed-out check can test -- so it has no direction and no robustness; two undetermined verdicts "
    "count as the same."
)


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


def robustness(ci_low: float, ci_high: float, ref: float = 0.0, n: int | None = None) -> str:
    """``"robust"`` when the interval lies above or below ``ref`` by at least its own half-width
    (``MARGIN``) and rests on at least ``MIN_PAIRS`` pairs (``n``; None: not checked), else
    ``"marginal"`` -- a ``no detectable difference`` always; ``"undetermined"`` without an interval
    (module docstring)."""
    verdict = direction(ci_low, ci_high, ref)
    if verdict == "undetermined":
        return "undetermined"
    if verdict == "no detectable difference" or (n is not None and n < MIN_PAIRS):
        return "marginal"
    margin = MARGIN * (ci_high - ci_low) / 2
    clearance = ci_low - ref if verdict == "higher" else ref - ci_high
    return "robust" if clearance >= margin else "marginal"


def possible_directions(ci_low: float, ci_high: float, ref: float = 0.0, n: int | None = None) -> set[str]:
    """The ``direction``s a rerun may give: the interval's own when robust; a marginal difference may
    become no detectable difference; no detectable difference may become a difference on the side of
    its mean (either side at the reference)."""
    verdict = direction(ci_low, ci_high, ref)
    if robustness(ci_low, ci_high, ref, n) != "marginal":
        return {verdict}
    if verdict != "no detectable difference":
        return {verdict, "no detectable difference"}
    mean = (ci_low + ci_high) / 2
    return {verdict} | ({"higher"} if mean >= ref else set()) | ({"lower"} if mean <= ref else set())


def robust_aggregate(
    verdict: Callable[[Sequence[str]], object],
    intervals: Sequence[tuple[float, ...]],
    ref: float = 0.0,
) -> str:
    """Whether a verdict computed from the directions of several intervals (``verdict(directions)``,
    e.g. a claim over thresholds) is robust: ``"robust"`` when it is the same for every combination of
    the directions a rerun may give each interval (``possible_directions``; an interval is ``(ci_low,
    ci_high)`` or ``(ci_low, ci_high, n)``), else ``"marginal"``."""
    options = [sorted(possible_directions(i[0], i[1], ref, i[2] if len(i) > 2 else None)) for i in intervals]
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
