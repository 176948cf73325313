"""Figure 2: accuracy against pruning factor for magnitude, relevance and FlexRel.

``compute`` sweeps every (condition, method, p, seed) point from the trained dense model of each
seed (``workbook.pipeline``: relevance computed once per seed and reused for every point, each
point cached), one-shot and fine-tuned with masks fixed, in-distribution and under an
inference-distribution shift; ``summarize`` reads off each method's highest pruning factor within
1, 2 and 5 points of dense accuracy; ``plot`` draws the curves; ``report`` states the verdict on the
paper's claim ("FlexRel reaches higher pruning factors at the same accuracy").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..progress import progress
from ..scores import METHODS, method_delta
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import evaluate_point, prepare
from ..workbook.report import markdown_table, pct
from .style import METHOD_ORDER, PALETTE, p_axis

SCHEDULES = {"one-shot": "one_shot_accuracy", "fine-tuned": "fine_tuned_accuracy"}
THRESHOLDS = (1.0, 2.0, 5.0)


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    methods: Sequence[str] = METHODS,
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    delta: float = 0.5,
    shift: dict | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> pd.DataFrame:
    """Test accuracy against pruning factor, one row per (condition, method, p, seed).

    ``condition`` is ``"in-distribution"`` and, when ``shift`` is non-empty, also ``"shifted"``
    (relevance on the shifted inference split, accuracy on the shifted test split). Columns:
    condition, method, delta, p, seed, dense_accuracy, one_shot_accuracy, fine_tuned_accuracy
    (NaN without fine-tuning), sparsity, fine_tuned_sparsity (measured on the weights).
    """
    conditions = {"in-distribution": {}, **({"shifted": shift} if shift else {})}
    deltas = {m: method_delta(m, delta) for m in methods}
    bar = progress(total=len(seeds) * len(conditions) * len(methods) * len(pruning_factors), desc="fig2 points")
    rows = []
    for seed in seeds:
        cfg = dataclasses.replace(base, seed=int(seed))
        setups = {
            c: prepare(cfg, pcfg, shift=spec, cache_root=cache_root, device=device) for c, spec in conditions.items()
        }
        for method in methods:
            for p in pruning_factors:
                memo: dict = {}  # a magnitude model fine-tuned once serves every condition
                for condition, setup in setups.items():
                    point = evaluate_point(
                        setup, deltas[method], float(p), pcfg, cache_root=cache_root, device=device, memo=memo
                    )
                    tuned = point["fine_tuned"] or {}
                    rows.append(
                        {
                            "condition": condition,
                            "method": method,
                            "delta": deltas[method],
                            "p": float(p),
                            "seed": int(seed),
                            "dense_accuracy": setup.dense_test_accuracy,
                            "one_shot_accuracy": point["one_shot"]["test"],
                            "fine_tuned_accuracy": tuned.get("test", np.nan),
                            "sparsity": point["one_shot"]["sparsity"],
                            "fine_tuned_sparsity": tuned.get("sparsity", np.nan),
                        }
                    )
                    bar.update()
    bar.close()
    order = ["condition", "method", "p", "seed"]
    return pd.DataFrame(rows).sort_values(order, kind="stable", ignore_index=True)


def highest_p_within(drop_points: pd.Series, threshold: float) -> float:
    """Highest p of the grid up to which the accuracy drop (points, indexed by p) stays within
    ``threshold`` at *every* p of the grid; NaN if the smallest p already leaves the band."""
    best = np.nan
    for p, drop in drop_points.sort_index().items():
        if drop > threshold + 1e-9:
            break
        best = float(p)
    return best


def summarize(df: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """Per (condition, schedule, threshold): each method's highest pruning factor whose mean
    accuracy (over seeds) stays within ``threshold`` points of the mean dense accuracy
    (``highest_p_within``), and ``flexrel_gain`` = FlexRel's p minus magnitude's p.

    Columns: condition, schedule, threshold_points, dense_accuracy, max_p_<method>..., flexrel_gain.
    """
    df = df if "condition" in df else df.assign(condition="in-distribution")
    methods = [m for m in METHODS if m in set(df["method"])] + sorted(set(df["method"]) - set(METHODS))
    rows = []
    for condition, g in df.groupby("condition", sort=False):
        dense = float(g.groupby("seed")["dense_accuracy"].first().mean())
        for schedule, column in SCHEDULES.items():
            if column not in g or g[column].isna().all():
                continue
            drop = (100.0 * (g["dense_accuracy"] - g[column])).groupby([g["method"], g["p"]]).mean()
            for t in thresholds:
                row = {"condition": condition, "schedule": schedule, "threshold_points": float(t)}
                row["dense_accuracy"] = dense
                for m in methods:
                    row[f"max_p_{m}"] = highest_p_within(drop.loc[m], t)
                if "flexrel" in methods and "magnitude" in methods:
                    row["flexrel_gain"] = round(row["max_p_flexrel"] - row["max_p_magnitude"], 10)
                rows.append(row)
    return pd.DataFrame(rows)


def curve_differences(df: pd.DataFrame, margin_points: float = 1.0) -> dict[tuple[str, str], tuple[list, list]]:
    """Per (condition, schedule): the pruning factors at which FlexRel's mean accuracy (over seeds)
    beats magnitude's by more than ``margin_points``, and those where magnitude beats FlexRel."""
    df = df if "condition" in df else df.assign(condition="in-distribution")
    out = {}
    for condition, g in df.groupby("condition", sort=False):
        for schedule, column in SCHEDULES.items():
            if column not in g or g[column].isna().all():
                continue
            mean = 100 * g.groupby(["method", "p"])[column].mean()
            diff = (mean.loc["flexrel"] - mean.loc["magnitude"]).sort_index()
            out[(condition, schedule)] = (
                [float(p) for p, d in diff.items() if d > margin_points],
                [float(p) for p, d in diff.items() if d < -margin_points],
            )
    return out


def claim_verdict(gains: Sequence[float]) -> tuple[str, str]:
    """Whether FlexRel reaches higher pruning factors than magnitude at the same accuracy, from its
    gains (one per threshold): ``(short verdict, plain-words sentence)``."""
    g = np.asarray([x for x in gains if not np.isnan(x)], dtype=float)
    if g.size == 0:
        return "undetermined", "no threshold could be evaluated"
    if (g > 0).all():
        return "holds", "FlexRel reaches a higher pruning factor than magnitude at every accuracy threshold"
    if (g >= 0).all() and (g > 0).any():
        return "holds partly", "FlexRel reaches a higher pruning factor at some thresholds and the same at the others"
    if (g == 0).all():
        return "does not hold", "FlexRel and magnitude reach the same pruning factor at every threshold"
    if (g < 0).all():
        return "does not hold", "magnitude reaches a higher pruning factor than FlexRel at every threshold"
    if (g <= 0).all():
        return (
            "does not hold",
            "magnitude reaches a higher pruning factor at some thresholds and the same at the others",
        )
    return "mixed", "FlexRel is ahead at some thresholds and behind at others"


def report(df: pd.DataFrame, summary: pd.DataFrame, *, delta: float, fine_tune_epochs: int) -> str:
    """The Figure 2 section of REPORT.md: dense accuracy, each method's highest p within 1, 2 and 5
    points, FlexRel's gain over magnitude, and in plain words whether the paper's claim holds."""
    seeds = sorted(df["seed"].unique())
    grid = sorted(df["p"].unique())
    lines = [
        "## Figure 2 — accuracy against pruning factor",
        "",
        f"FlexRel with δ = {delta:g}; {len(seeds)} seed(s) (each its own data split and trained model); "
        f"pruning factors {', '.join(f'{p:g}' for p in grid)}; fine-tuning {fine_tune_epochs} epoch(s) "
        "with masks fixed (skipped at p = 0).",
        "",
    ]
    for condition, g in df.groupby("condition", sort=False):
        dense = g.groupby("seed")["dense_accuracy"].first()
        lines.append(
            f"- Dense test accuracy, {condition}: **{pct(dense.mean())}** (seeds: {', '.join(pct(a) for a in dense)})."
        )
    methods = [c.removeprefix("max_p_") for c in summary.columns if c.startswith("max_p_")]
    table = summary.rename(columns={f"max_p_{m}": m for m in methods}).rename(
        columns={"threshold_points": "within (points)", "flexrel_gain": "FlexRel − magnitude"}
    )
    table = table.drop(columns=["dense_accuracy"])
    lines += [
        "",
        "Highest pruning factor whose mean accuracy (over seeds) stays within 1, 2 and 5 points of the dense "
        "accuracy at every pruning factor of the grid up to it (`fig2_summary.csv`):",
        "",
        markdown_table(table, ".4g"),
        "",
    ]
    verdicts = {}
    for (condition, schedule), g in summary.groupby(["condition", "schedule"], sort=False):
        verdicts[(condition, schedule)] = claim_verdict(g["flexrel_gain"].tolist())
        thresholds = "/".join(f"{t:g}" for t in g["threshold_points"])
        kept = "; ".join(
            f"{m} {'/'.join(_kept(p) for p in g[f'max_p_{m}'])}" for m in ("flexrel", "magnitude") if m in methods
        )
        lines.append(
            f"- {condition}, {schedule}: {verdicts[(condition, schedule)][1]} "
            f"(weights kept within {thresholds} points: {kept})."
        )
    lines += [
        "",
        "Where the mean curves of FlexRel and magnitude differ by more than 1 point (any accuracy level):",
        "",
    ]
    for (condition, schedule), (ahead, behind) in curve_differences(df).items():
        lines.append(
            f"- {condition}, {schedule}: FlexRel more accurate at p = {', '.join(f'{p:g}' for p in ahead) or 'none'}; "
            f"magnitude more accurate at p = {', '.join(f'{p:g}' for p in behind) or 'none'}."
        )
    ind = {s: v for (c, s), v in verdicts.items() if c == "in-distribution"}
    short = {v[0] for v in ind.values()}
    if short == {"holds"}:
        overall = "**holds here**: on in-distribution data FlexRel prunes further than magnitude at every threshold"
    elif short <= {"does not hold", "undetermined"}:
        overall = "**does not hold here**: on in-distribution data FlexRel never prunes further than magnitude"
    else:
        overall = "**holds only partly here**: on in-distribution data, " + "; ".join(
            f"{schedule}: {sentence}" for schedule, (_, sentence) in ind.items()
        )
    shifted = [f"{s} — {v[0]}" for (c, s), v in verdicts.items() if c == "shifted"]
    lines += [
        "",
        f'The paper\'s claim ("FlexRel reaches higher pruning factors at the same accuracy") {overall}.'
        + (f" Under the inference shift, per schedule: {'; '.join(shifted)}." if shifted else "")
        + " Gains are measured on the grid of pruning factors above, so a gain of 0 means the same grid point.",
    ]
    return "\n".join(lines)


def _kept(p: float) -> str:
    """Percentage of weights kept at pruning factor ``p``."""
    return "—" if np.isnan(p) else f"{100 * (1 - p):.3g} %"


def plot(df: pd.DataFrame) -> Figure:
    """Test accuracy against pruning factor per method, mean ± one standard deviation
    over seeds; columns one-shot / fine-tuned, rows in-distribution / shifted inference data."""
    conditions = list(dict.fromkeys(df["condition"]))
    schedules = [(s, c) for s, c in (("one-shot", "one_shot_accuracy"), ("fine-tuned", "fine_tuned_accuracy"))]
    schedules = [(s, c) for s, c in schedules if df[c].notna().any()]
    fig, axes = plt.subplots(
        len(conditions), len(schedules), figsize=(6 * len(schedules), 4 * len(conditions)), squeeze=False
    )
    methods = [m for m in METHOD_ORDER if m in set(df["method"])]
    for i, condition in enumerate(conditions):
        sub = df[df["condition"] == condition]
        dense = 100 * sub.groupby("seed")["dense_accuracy"].first().mean()
        for j, (schedule, column) in enumerate(schedules):
            ax = axes[i, j]
            data = sub.assign(accuracy=100 * sub[column])
            sns.lineplot(
                data=data,
                x="p",
                y="accuracy",
                hue="method",
                hue_order=methods,
                palette=PALETTE,
                errorbar="sd",
                marker="o",
                ax=ax,
            )
            ax.axhline(dense, color="k", ls="--", lw=1, label=f"dense ({dense:.1f} %)")
            p_axis(ax, data["p"])
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{schedule}, {condition} (mean ± sd over {sub['seed'].nunique()} seed(s))")
            ax.legend(loc="best")
    fig.tight_layout()
    return fig
