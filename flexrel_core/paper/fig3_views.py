"""Figure 3's figures, drawn from the tables ``fig3`` computes: the paper's panels (time to each
accuracy target per technique), the data needed against the pruning factor, and the accuracy curves
against transmitted data and time."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..workbook.stats import t_interval
from .fig3 import PANELS, SCENARIOS, data_needed
from .style import LABELS, PALETTE


def plot(selection: pd.DataFrame, panels: Sequence[str] = PANELS) -> Figure:
    """The paper's Figure 3, one row per scenario: elapsed learning time against accuracy target, one
    panel per technique ((a) magnitude, (b) FlexRel, (c) relevance only), mean and 95 % interval over
    the seeds that reach the target (clipped at 0 s), each point annotated with the mean megabytes sent,
    the mean round reached and the seeds reaching it; the unpruned runs, where present, as a grey reference line."""
    scenarios = _scenarios(selection)
    fig, axes = plt.subplots(
        len(scenarios), len(panels), figsize=(4.4 * len(panels), 3.8 * len(scenarios)), sharey="row", squeeze=False
    )
    for row, scenario in zip(axes, scenarios, strict=True):
        summary = _by_target(selection if scenario is None else selection[selection["scenario"] == scenario])
        dense = summary[summary["technique"] == "dense"]
        for ax, technique, letter in zip(row, panels, "abcdefgh", strict=False):
            if not dense.empty:
                ax.plot(dense["target"], dense["elapsed_s"], ls="--", color=PALETTE["dense"], lw=1,
                        label=LABELS["dense"])  # fmt: skip
            part = summary[summary["technique"] == technique]
            ax.errorbar(
                part["target"], part["elapsed_s"],
                yerr=[part["elapsed_s"] - part["low"], part["high"] - part["elapsed_s"]],
                fmt="o-", capsize=3, color=PALETTE[technique], label=LABELS[technique],
            )  # fmt: skip
            for r in part.itertuples():
                ax.annotate(f"{r.mb:.2f} MB, r{r.round:.1f}\n{r.n}/{r.seeds}", (r.target, r.elapsed_s), fontsize=6,
                            textcoords="offset points", xytext=(0, 7), ha="center")  # fmt: skip
            ax.set_title(f"({letter}) {LABELS[technique]}" + (f" — {scenario}" if scenario else ""))
            ax.set_xlabel("accuracy target (validation)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        row[0].set_ylabel("elapsed learning time (s)")
    fig.tight_layout()
    return fig


def _by_target(selection: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, target): mean time, data and round over the seeds that reach it, interval, counts."""
    rows = []
    for (technique, target), g in selection.groupby(["technique", "target"], sort=False):
        hit = g[g["reached"].astype(bool)]
        t = t_interval(hit["elapsed_s"].tolist())
        if not len(hit):
            continue
        low, high = (max(t["ci_low"], 0.0), t["ci_high"]) if t["n"] > 1 else (t["mean"], t["mean"])  # time >= 0
        rows.append(
            {"technique": technique, "target": target, "elapsed_s": t["mean"], "low": low, "high": high}
            | {"mb": float(hit["mb"].mean()), "round": float(hit["round"].mean()), "n": len(hit)}
            | {"seeds": g["seed"].nunique()}
        )
    return pd.DataFrame(rows, columns=["technique", "target", "elapsed_s", "low", "high", "mb", "round", "n", "seeds"])


def plot_data_needed(rounds: pd.DataFrame, selection: pd.DataFrame, panels: Sequence[str] = PANELS) -> Figure:
    """How the data needed varies with the pruning factor, one row per scenario, at the middle target of
    ``selection``: per technique and seed, the megabytes sent until the validation accuracy first
    meets the target, against p, over every factor run (grid and refinement); the factor chosen for
    each seed is circled. Factors that never reach the target within the rounds are left out."""
    targets = sorted(selection["target"].unique())
    target = targets[(len(targets) - 1) // 2]
    need = data_needed(rounds, [target])
    chosen = selection[selection["target"] == target]
    scenarios = _scenarios(need)
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(7.5, 3.6 * len(scenarios)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        here = need if scenario is None else need[need["scenario"] == scenario]
        picked = chosen if scenario is None else chosen[chosen["scenario"] == scenario]
        for technique in panels:
            for i, (_, g) in enumerate(here[(here["technique"] == technique) & here["reached"]].groupby("seed")):
                g = g.sort_values("amount")
                ax.plot(g["amount"], g["mb"], "o-", ms=2.5, lw=0.8, alpha=0.6, color=PALETTE[technique],
                        label=LABELS[technique] if i == 0 else None)  # fmt: skip
            p = picked[(picked["technique"] == technique) & picked["reached"]]
            ax.scatter(p["amount"], p["mb"], s=60, facecolors="none", edgecolors=PALETTE[technique], lw=1.5)
        if (here["reached"] & here["technique"].isin(panels)).any():
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no run reaches the target", transform=ax.transAxes, ha="center")
        ax.set_xlabel("pruning factor p")
        ax.set_ylabel(f"MB to {target:.0%} (validation)")
        ax.set_title(f"data needed against p, target {target:g}" + (f" — {scenario}" if scenario else ""))
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_curves(curve: pd.DataFrame, amounts: Sequence[float] | None = None) -> Figure:
    """The primary view, one row per scenario: test accuracy against cumulative transmitted megabytes
    (left) and against elapsed time (right), per technique at the pruning factors ``amounts`` (default:
    a few across the grid), mean and 95 % interval over seeds; validation accuracy in a scenario whose
    test accuracy was measured only where targets are reached."""
    scenarios = _scenarios(curve)
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 4.2 * len(scenarios)), sharey="row", squeeze=False)
    styles = ["-", "--", ":", "-."]
    for row, scenario in zip(axes, scenarios, strict=True):
        here = curve if scenario is None else curve[curve["scenario"] == scenario]
        y = "accuracy" if here["accuracy"].notna().all() or "val_accuracy" not in here else "val_accuracy"
        grid = sorted(here.loc[here["technique"] != "dense", "amount"].unique())
        shown = amounts if amounts is not None else sorted({grid[0], grid[len(grid) // 2], grid[-1]})
        for (technique, amount), g in here.groupby(["technique", "amount"], sort=False):
            if technique != "dense" and amount not in shown:
                continue
            ls = "-" if technique == "dense" else styles[list(shown).index(amount) % len(styles)]
            label = LABELS[technique] + ("" if technique == "dense" else f", p = {amount:g}")
            for ax, x in zip(row, ("mb", "elapsed_s"), strict=True):
                ax.plot(g[x], 100 * g[y], ls, marker="o", ms=2.5, color=PALETTE[technique], label=label)
                ax.fill_between(g[x], 100 * g[f"{y}_ci_low"], 100 * g[f"{y}_ci_high"],
                                color=PALETTE[technique], alpha=0.12, lw=0)  # fmt: skip
        row[0].set_xlabel("transmitted data, cumulative (MB)")
        row[1].set_xlabel("elapsed learning time (s)")
        name = "test" if y == "accuracy" else "validation"
        row[0].set_ylabel(f"{name} accuracy (%)" + (f" — {scenario}" if scenario else ""))
        for ax in row:
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def _scenarios(df: pd.DataFrame) -> list:
    """The scenarios of ``df`` in ``SCENARIOS`` order (others after, sorted); ``[None]`` without the column."""
    if "scenario" not in df:
        return [None]
    names = set(df["scenario"])
    return [s for s in SCENARIOS if s in names] + sorted(names - set(SCENARIOS))
