"""Against other data-aware scores: is it LRP relevance that helps FlexRel, or any inference-time signal?

FlexRel (s = (1 − δ)·M_norm + δ·R_norm) is compared, paired over seeds, with the paper's baselines
(magnitude, relevance only), with two well-known scores that also weigh a weight by what the data
does to it -- Wanda (|w|·‖X‖₂, Sun et al., 2023) and first-order Taylor (|w·∂L/∂w|, Molchanov et al.,
2019; Lee et al., 2019) --, with random pruning (the floor), and with the control that isolates the
signal: FlexRel's blend with the Taylor score in place of LRP relevance (s = (1 − δ)·M_norm + δ·T_norm,
same δ, same whole-model min-max normalisation). The data-aware scores are computed on the same
inference sample as relevance (``workbook.signals``); every method prunes with one global threshold
(``scores.pruning_scores`` says how each score enters it).

``compute`` runs the map's sweep (``robustness.compute``: Figure 2's points per setting, one-shot
and after ``fine_tune_epochs`` of fine-tuning, every point cached and shared with Figure 2 and the
map); ``differences`` and ``reach_effects`` give FlexRel − each baseline with 95 % t-intervals through
Figure 2's own functions (``fig2.differences``, ``fig2.summarize``); ``verdicts`` turns them into one
verdict per setting, schedule, condition and baseline, robust or marginal (``workbook.stats``);
``plot`` and ``report`` draw and state them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..scores import ALL_METHODS, check_method
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.stats import direction, format_interval, labelled, robust_aggregate, robustness
from . import fig2
from . import robustness as robustness_map
from .style import LABELS, PALETTE, p_axis

BASELINES = ("magnitude", "relevance", "wanda", "taylor", "random", "flexrel_taylor")
# How each map cell's verdict (``robustness.verdict``) reads when FlexRel is compared with a baseline.
WORDS = {
    "holds": "FlexRel better",
    "more accurate at the knee": "FlexRel better",
    "reversed": "FlexRel worse",
    "less accurate at the knee": "FlexRel worse",
    "mixed": "mixed",
    "no detectable difference": "no detectable difference",
    "undetermined": "undetermined",
}
KEYS = ["setting", "budget", "schedule", "condition"]


def check_baselines(baselines: Sequence[str]) -> tuple[str, ...]:
    """``baselines`` as a tuple of known methods other than FlexRel (each compared with it)."""
    for b in baselines:
        check_method(b)
    if "flexrel" in baselines or not baselines:
        raise ValueError(f"baselines must be methods compared with FlexRel, without 'flexrel'; got {list(baselines)}")
    return tuple(baselines)


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    settings: Sequence[Mapping],
    baselines: Sequence[str] = BASELINES,
    one_shot_only: Sequence[str] = (),
    seeds: Sequence[int],
    delta: float,
    shift: dict | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
    threads: int | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Test accuracy of FlexRel and every baseline, one row per (setting, budget, condition, method,
    p, seed): the map's sweep (``robustness.compute``) with these methods and one fine-tuning budget,
    ``pcfg.fine_tune_epochs`` (budget 0 rows: a setting's ``one_shot_factors``, pruned without
    fine-tuning). A setting is the map's: ``TrainConfig`` fields, ``pruning_factors`` (one-shot and
    fine-tuned), ``knee``, optional ``one_shot_factors``; it may not bring its own ``budgets``. The
    baselines of ``one_shot_only`` (e.g. random pruning, the floor, at chance accuracy across the knee
    either way) are pruned one-shot at every factor and never fine-tuned: an epoch per point saved."""
    methods = ("flexrel", *check_baselines(baselines))
    extra = sorted(set(one_shot_only) - set(baselines))
    if extra:
        raise ValueError(f"one_shot_only {extra} are not among the baselines {list(baselines)}")
    if pcfg.fine_tune_epochs < 1:
        raise ValueError("fine_tune_epochs must be >= 1: every method is compared one-shot and fine-tuned")
    own = [s["name"] for s in settings if "budgets" in s]
    if own:
        raise ValueError(f"settings {own} give budgets; the comparison fine-tunes for fine_tune_epochs (common.yaml)")
    kw = {"seeds": seeds, "delta": delta, "shift": shift, "cache_root": cache_root, "device": device}
    kw |= {"budgets": [pcfg.fine_tune_epochs], "threads": threads, "workers": workers}
    tuned = [m for m in methods if m not in one_shot_only]
    df = robustness_map.compute(base, pcfg, settings=settings, methods=tuned, **kw)
    if not one_shot_only:
        return df
    flat = [  # every factor one-shot only: budget 0
        {**s, "one_shot_factors": sorted({*s.get("one_shot_factors", []), *s["pruning_factors"]})}
        | {"pruning_factors": []}
        for s in settings
    ]
    df = pd.concat([df, robustness_map.compute(base, pcfg, settings=flat, methods=list(one_shot_only), **kw)])
    order = {s["name"]: i for i, s in enumerate(settings)}
    return df.sort_values(
        ["setting", "budget", "condition", "method", "p", "seed"],
        key=lambda c: c.map(order) if c.name == "setting" else c,
        kind="stable",
        ignore_index=True,
    )


def _baselines_in(table: pd.DataFrame) -> list[str]:
    present = set(table["method"])
    return [m for m in ALL_METHODS if m in present and m != "flexrel"]


def differences(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting, schedule, condition, pruning factor and baseline: FlexRel − baseline in test
    accuracy (fractions), paired over seeds, 95 % t-interval (``fig2.differences``), what it supports
    (``stats.direction``) and whether that is robust (``stats.robustness``)."""
    parts = []
    for setting, budget, schedule, table in robustness_map.by_schedule(df):
        for b in _baselines_in(table):
            d = fig2.differences(table, base=b, others=("flexrel",))
            parts.append(d.assign(setting=setting, budget=budget, schedule=schedule, baseline=b))
    out = pd.concat(parts, ignore_index=True)
    out["supports"] = [direction(lo, hi) for lo, hi in zip(out["ci_low"], out["ci_high"], strict=True)]
    out["robust"] = [robustness(lo, hi, n=n) for lo, hi, n in zip(out["ci_low"], out["ci_high"], out["n"], strict=True)]
    return out[[*KEYS, "p", "baseline", "n", "mean", "sd", "ci_low", "ci_high", "supports", "robust"]]


def at_knees(diff: pd.DataFrame, knees: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """The rows of ``differences`` at each setting's knee factors."""
    return diff[[float(p) in {float(k) for k in knees[s]} for s, p in zip(diff["setting"], diff["p"], strict=True)]]


def reach_effects(df: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Per setting, schedule, condition and baseline: the pruning factor FlexRel and the baseline
    reach within ``threshold`` points of dense accuracy (mean over seeds, on the setting's grid) and
    FlexRel − baseline, paired over seeds, with its 95 % interval (``fig2.summarize``), what it
    supports and whether that is robust. NaN reach: every seed leaves the band at the grid's first factor."""
    rows = []
    for setting, budget, schedule, table in robustness_map.by_schedule(df):
        for b in _baselines_in(table):
            s = fig2.summarize(table, thresholds=(threshold,), base=b, others=("flexrel",))
            for r in s.itertuples():
                lo, hi = getattr(r, "gain_flexrel_ci_low", np.nan), getattr(r, "gain_flexrel_ci_high", np.nan)
                n = getattr(r, "pairs_flexrel", r.n_seeds)  # the seeds where both reach the band
                rows.append(
                    dict(zip(KEYS, (setting, budget, schedule, r.condition), strict=True))
                    | {"baseline": b, "n_seeds": r.n_seeds, "pairs": n, "reach_flexrel": r.max_p_flexrel}
                    | {"reach_baseline": getattr(r, f"max_p_{b}"), "gain": getattr(r, "gain_flexrel", np.nan)}
                    | {"ci_low": lo, "ci_high": hi, "supports": direction(lo, hi), "robust": robustness(lo, hi, n=n)}
                )
    return pd.DataFrame(rows)


def verdict(directions: Sequence[str]) -> str:
    """FlexRel against one baseline in one cell, from what the intervals support (``stats.direction``):
    the reach gain's first, then the accuracy differences at the knee factors (``robustness.verdict``,
    read as ``WORDS``)."""
    return WORDS[robustness_map.verdict(directions[0], list(directions[1:]))]


def verdicts(reach: pd.DataFrame, diff: pd.DataFrame, knees: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """One row per setting, schedule, condition and baseline: the reach gain and the accuracy
    differences at the setting's ``knees`` (points, ``"p = …: mean [low, high]"``), the ``verdict``,
    its ``basis`` (the reach, or the accuracy at the knee) and ``robust`` (``stats.robust_aggregate``
    over those intervals: no direction a marginal interval may take on a rerun changes the verdict)."""
    rows = []
    for r in reach.itertuples():
        at = diff[
            (diff["setting"] == r.setting)
            & (diff["schedule"] == r.schedule)
            & (diff["condition"] == r.condition)
            & (diff["baseline"] == r.baseline)
            & diff["p"].isin([float(p) for p in knees[r.setting]])
        ].sort_values("p")
        intervals = [(r.ci_low, r.ci_high, r.pairs), *zip(at["ci_low"], at["ci_high"], at["n"], strict=True)]
        v = verdict([direction(lo, hi) for lo, hi, _ in intervals])
        basis = "reach" if r.supports in ("higher", "lower") else "accuracy at the knee"
        rows.append(
            {k: getattr(r, k) for k in [*KEYS, "baseline", "n_seeds", "pairs", "reach_flexrel", "reach_baseline"]}
            | {"gain": r.gain, "ci_low": r.ci_low, "ci_high": r.ci_high}
            | {"knee": "; ".join(f"p = {a.p:g}: {_points(a.mean, a.ci_low, a.ci_high)}" for a in at.itertuples())}
            | {"verdict": v, "basis": basis if v not in ("no detectable difference", "undetermined") else "—"}
            | {"robust": robust_aggregate(verdict, intervals)}
        )
    return pd.DataFrame(rows)


def _points(mean: float, low: float, high: float) -> str:
    return format_interval(mean, low, high, scale=100, digits=1)


def _reach(p: float) -> str:
    return "below the grid" if np.isnan(p) else f"{p:.3f}"


def report(df: pd.DataFrame, judged: pd.DataFrame, *, delta: float, threshold: float, fine_tune_epochs: int) -> str:
    """The baselines section of REPORT.md: what is compared and how, the reach of every method, FlexRel −
    each baseline with its verdict per setting, schedule and condition, and what the control says."""
    seeds = sorted(df["seed"].unique())
    conditions = list(dict.fromkeys(judged["condition"]))
    baselines = list(dict.fromkeys(judged["baseline"]))
    grids = "; ".join(
        f"{s}: {', '.join(f'{p:g}' for p in sorted(g['p'].unique()))} (fine-tuned at "
        f"{', '.join(f'{p:g}' for p in sorted(g.loc[g['budget'] > 0, 'p'].unique()))})"
        for s, g in df.groupby("setting", sort=False)
    )
    untuned = [LABELS.get(m, m) for m in baselines if not (df.loc[df["method"] == m, "budget"] > 0).any()]
    if untuned:
        grids += f"; {', '.join(untuned)} one-shot only (never fine-tuned)"
    lines = [
        "## Against other data-aware scores",
        "",
        f"Is it LRP relevance that helps FlexRel (δ = {delta:g}), or any inference-time signal? FlexRel against "
        "magnitude and relevance-only pruning, Wanda (|w|·‖X‖₂, the input norm over the inference sample; for a "
        "convolution, over samples and output positions of its unfolded input), first-order Taylor (|w·∂L/∂w|, "
        "cross-entropy against the predicted class, since inference data has no labels), random pruning (the "
        "floor), and the control FlexRel with Taylor: (1 − δ)·M_norm + δ·T_norm, the Taylor score in place of "
        "LRP relevance with the same δ and the same whole-model min–max normalisation. Wanda, Taylor and "
        "relevance are computed on the same inference sample; every method prunes with one global threshold "
        "(single scores raw, blends normalised). "
        f"{len(seeds)} seeds, one-shot and after {fine_tune_epochs} fine-tuning epoch(s) with masks fixed; "
        f"pruning factors per setting: {grids}. Differences are FlexRel − baseline, paired over seeds, mean "
        f"[95 % t-interval]; reach: the pruning factor reached within {threshold:g} points of dense accuracy, on "
        "the setting's grid (`baselines_accuracy.csv`, `baselines_differences.csv`, `baselines_verdicts.csv`).",
        "",
    ]
    methods = ["flexrel", *baselines]
    head = " | ".join(LABELS.get(m, m) for m in methods)
    lines += [f"Reach within {threshold:g} points (mean over seeds):", ""]
    lines += [f"| setting | schedule | condition | {head} |", "|---|---|---|" + "---|" * len(methods)]
    for key, g in judged.groupby(["setting", "schedule", "condition"], sort=False):
        reach = {"flexrel": g["reach_flexrel"].iloc[0]} | dict(zip(g["baseline"], g["reach_baseline"], strict=True))
        cells = [_reach(reach[m]) if m in reach else "one-shot only" for m in methods]
        lines.append(f"| {' | '.join(key)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| setting | schedule | condition | baseline | reach, FlexRel − baseline | accuracy at the knee factors, "
        "FlexRel − baseline (points) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in judged.itertuples():
        gain = format_interval(r.gain, r.ci_low, r.ci_high, digits=3)
        lines.append(
            f"| {r.setting} | {r.schedule} | {r.condition} | {LABELS.get(r.baseline, r.baseline)} | {gain} | "
            f"{r.knee} | **{labelled(r.verdict, r.robust)}** |"
        )
    lines += ["", *_findings(judged, conditions)]
    return "\n".join(lines)


def _cell(r, conditions: list[str]) -> str:
    """A verdict's place: setting and schedule, and its condition where the report has several."""
    return f"{r.setting}, {r.schedule}" + (f", {r.condition}" if len(conditions) > 1 else "")


def _findings(judged: pd.DataFrame, conditions: list[str]) -> list[str]:
    """Per baseline, its verdicts over the cells; the control; and the headline from robust verdicts only."""
    lines = []
    for b, g in judged.groupby("baseline", sort=False):
        counts = g["verdict"].value_counts()
        said = "; ".join(
            f"{v} in {n} of {len(g)} (robust in {int(((g['verdict'] == v) & (g['robust'] == 'robust')).sum())})"
            for v, n in counts.items()
        )
        where = "; ".join(f"{_cell(r, conditions)}: {labelled(r.verdict, r.robust)}" for r in g.itertuples())
        lines.append(f"- **Against {LABELS.get(b, b)}**: {said} — {where}.")
    control = judged[judged["baseline"] == "flexrel_taylor"]
    if len(control):
        better = control[(control["verdict"] == "FlexRel better") & (control["robust"] == "robust")]
        lines.append(
            "- **The control** (FlexRel − FlexRel with Taylor, same blend and δ, Taylor in place of LRP relevance): "
            + (
                "LRP relevance does better than the Taylor signal, robustly, in "
                + "; ".join(f"{r.setting}, {r.schedule}" for r in better.itertuples())
                if len(better)
                else "no robust verdict that LRP relevance does better than the Taylor signal in the same blend"
            )
            + "."
        )
    robust = judged[(judged["robust"] == "robust") & judged["verdict"].isin(["FlexRel better", "FlexRel worse"])]
    headline = "; ".join(
        f"{r.verdict} than {LABELS.get(r.baseline, r.baseline)} ({_cell(r, conditions)}, by {r.basis})"
        for r in robust.itertuples()
    )
    lines.append(f"- **Robust verdicts only**: {headline or 'none'}.")
    return lines


def plot(df: pd.DataFrame, diff: pd.DataFrame) -> Figure:
    """Per setting (row pairs) and schedule (columns): test accuracy against pruning factor for every
    method (mean ± one standard deviation over seeds), and under it FlexRel − each baseline (mean and
    95 % interval, points; the y range holds every mean, a wide band may leave it); in-distribution
    only when there are several conditions."""
    condition = "in-distribution" if "in-distribution" in set(df["condition"]) else df["condition"].iloc[0]
    schedules = list(dict.fromkeys(diff["schedule"]))
    panels = [(s, b, sch, t[t["condition"] == condition]) for s, b, sch, t in robustness_map.by_schedule(df)]
    settings = list(dict.fromkeys(s for s, *_ in panels))
    fig, axes = plt.subplots(
        2 * len(settings), len(schedules), figsize=(6.5 * len(schedules), 7.5 * len(settings)), squeeze=False,
        gridspec_kw={"height_ratios": [1.6, 1.0] * len(settings)},
    )  # fmt: skip
    for setting, _, schedule, table in panels:
        i, j = settings.index(setting), schedules.index(schedule)
        ax, ax_diff = axes[2 * i, j], axes[2 * i + 1, j]
        long = fig2.long_form(table)
        means = long.groupby(["method", "p"])["accuracy"].agg(["mean", "std"]).reset_index()
        for m in [m for m in ALL_METHODS if m in set(means["method"])]:
            g = means[means["method"] == m]
            style = "--" if m == "flexrel_taylor" else "-"
            ax.plot(g["p"], 100 * g["mean"], style, marker="o", ms=3, color=PALETTE[m], label=LABELS[m])
            ax.fill_between(g["p"], 100 * (g["mean"] - g["std"]), 100 * (g["mean"] + g["std"]), color=PALETTE[m],
                            alpha=0.12, lw=0)  # fmt: skip
        dense = 100 * long.groupby("seed")["dense_accuracy"].first().mean()
        ax.axhline(dense, color="k", ls=":", lw=1, label=f"dense ({dense:.1f} %)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{setting} — {schedule}, {condition} ({long['seed'].nunique()} seeds, mean ± sd)", fontsize=9)
        ax.legend(loc="lower left", fontsize=7)
        d = diff[(diff["setting"] == setting) & (diff["schedule"] == schedule) & (diff["condition"] == condition)]
        for b in [m for m in ALL_METHODS if m in set(d["baseline"])]:
            g = d[d["baseline"] == b].sort_values("p")
            ax_diff.plot(g["p"], 100 * g["mean"], "o-", ms=3, color=PALETTE[b], label=f"FlexRel − {LABELS[b]}")
            ax_diff.fill_between(g["p"], 100 * g["ci_low"], 100 * g["ci_high"], color=PALETTE[b], alpha=0.1, lw=0)
        ax_diff.axhline(0, color="k", lw=0.8)
        span = min(max(100 * d["mean"].abs().max() * 1.3, 1.0), 100.0) if len(d) else 100.0
        ax_diff.set_ylim(-span, span)  # every mean shown; a wide interval may leave the panel
        ax_diff.set_ylabel("FlexRel − baseline (points)")
        ax_diff.set_title("paired difference, mean and 95 % interval", fontsize=9)
        ax_diff.legend(loc="upper left", fontsize=7)
        for a in (ax, ax_diff):
            p_axis(a, table["p"])
    fig.tight_layout()
    return fig
