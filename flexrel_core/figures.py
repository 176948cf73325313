"""Drawing the paper's figures from saved results (the CSVs the notebooks write).

Compute is kept apart from drawing (``experiments.py`` computes): every function here takes the
DataFrames read back from ``results/<profile>/*.csv`` and returns a matplotlib ``Figure``, so
restyling a plot never retrains a model.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

METHOD_ORDER = ["magnitude", "relevance", "flexrel"]
PALETTE = {"magnitude": "#1f77b4", "relevance": "#ff7f0e", "flexrel": "#2ca02c"}
P_TICKS = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]


def _stretch(p):
    """-log10(1 - p): spreads the high pruning factors (0.9 -> 1, 0.99 -> 2)."""
    return -np.log10(np.clip(1 - np.asarray(p, dtype=float), 1e-6, None))


def _unstretch(s):
    return 1 - 10 ** (-np.asarray(s, dtype=float))


def _p_axis(ax, ps) -> None:
    """Pruning-factor x axis stretched near 1, ticks at the usual factors inside the data range."""
    ax.set_xscale("function", functions=(_stretch, _unstretch))
    hi = max(ps)
    ax.set_xticks([t for t in P_TICKS if t <= hi + 1e-9])
    ax.set_xticklabels([f"{t:g}" for t in P_TICKS if t <= hi + 1e-9])
    ax.set_xlim(min(ps), hi)
    ax.set_xlabel("pruning factor p (axis stretched near 1)")


def fig1(weights: pd.DataFrame, overlap: pd.DataFrame) -> Figure:
    """Figure 1: the kept/pruned mask of one layer under each method, and M_norm against R_norm
    coloured by FlexRel's decision (``experiments.mask_comparison``'s ``weights`` and ``overlap``)."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.1]})
    jac = {(r.method_a, r.method_b): r.jaccard_layer for r in overlap.itertuples()}
    cmap = ListedColormap(["#d9d9d9", "#08306b"])
    for ax, method in zip(axes[:3], METHOD_ORDER, strict=True):
        grid = weights.pivot(index="row", columns="col", values=f"kept_{method}").astype(float)
        ax.imshow(grid.to_numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{method}: keeps {grid.to_numpy().mean():.0%}")
        ax.set_xlabel("input (x kernel position)")
        ax.set_ylabel("output unit")
    pairs = ", ".join(f"{a[:3]}–{b[:3]} {j:.2f}" for (a, b), j in jac.items())
    kept = weights["kept_flexrel"].astype(bool)
    ax = axes[3]
    ax.scatter(
        weights.loc[~kept, "m_norm"], weights.loc[~kept, "r_norm"], s=4, c="#bdbdbd", label="pruned", rasterized=True
    )
    ax.scatter(
        weights.loc[kept, "m_norm"],
        weights.loc[kept, "r_norm"],
        s=4,
        c="#2ca02c",
        label="kept by FlexRel",
        rasterized=True,
    )
    ax.set_xlabel("M_norm (magnitude)")
    ax.set_ylabel("R_norm (relevance)")
    ax.set_title("FlexRel's decision")
    ax.legend(loc="best", markerscale=3, frameon=True)
    layer = weights["layer"].iloc[0]
    fig.suptitle(f"Layer {layer}: kept (dark) and pruned (light) weights. Jaccard overlaps: {pairs}")
    fig.tight_layout()
    return fig


def fig2(df: pd.DataFrame) -> Figure:
    """Figure 2: test accuracy against pruning factor per method, mean ± one standard deviation
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
            _p_axis(ax, data["p"])
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{schedule}, {condition} (mean ± sd over {sub['seed'].nunique()} seed(s))")
            ax.legend(loc="best")
    fig.tight_layout()
    return fig


def fig4(df: pd.DataFrame, recommended: float | None = None) -> Figure:
    """Figure 4: test accuracy against δ, one line per pruning factor (mean ± sd over seeds), one
    panel per schedule; the recommended δ (chosen on validation data) as a vertical line."""
    schedules = list(dict.fromkeys(df["schedule"]))
    fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.2), squeeze=False)
    for ax, schedule in zip(axes[0], schedules, strict=True):
        data = df[df["schedule"] == schedule].assign(accuracy=lambda d: 100 * d["test_accuracy"])
        data = data.assign(p=data["p"].map(lambda p: f"p = {p:g}"))
        sns.lineplot(data=data, x="delta", y="accuracy", hue="p", errorbar="sd", marker="o", ax=ax, palette="viridis")
        if recommended is not None:
            ax.axvline(recommended, color="crimson", ls="--", lw=1.2, label=f"recommended δ = {recommended:g}")
        ax.set_xlabel("δ (0 = magnitude, 1 = relevance)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{schedule} (mean ± sd over {df['seed'].nunique()} seed(s))")
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def table1(costs: pd.DataFrame) -> Figure:
    """Table 1 as bars: time and peak memory to compute each score, and bytes of the pruned model."""
    panels = [
        ("score_time_min_s", 1000, "score time, best of runs (ms, log)"),
        ("peak_memory_mib", 1, "peak memory (MiB)"),
        ("pruned_model_bytes", 1 / 1024, "pruned model (KiB)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    methods = [m for m in METHOD_ORDER if m in set(costs["method"])]
    t = costs.set_index("method").loc[methods]
    for ax, (column, scale, label) in zip(axes, panels, strict=True):
        values = t[column] * scale
        ax.bar(methods, values, color=[PALETTE[m] for m in methods])
        for k, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (k, v), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel(label)
        if column.startswith("score_time"):
            ax.set_yscale("log")
    dense = costs["dense_model_bytes"].iloc[0] / 1024
    axes[2].axhline(dense, color="k", ls="--", lw=1, label=f"dense ({dense:.3g} KiB)")
    axes[2].legend(loc="upper right")
    fig.suptitle(f"Cost of each technique (p = {costs['p'].iloc[0]:g}, {costs['device'].iloc[0]})")
    fig.tight_layout()
    return fig
