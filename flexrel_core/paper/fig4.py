"""Figure 4: accuracy against δ for several pruning factors -- guidance for choosing δ.

``compute`` sweeps δ x p x seed from the trained dense model of each seed (points shared with
Figure 2 where δ and p coincide), one-shot and fine-tuned; ``recommend_delta`` picks δ on
*validation* accuracy only (``DELTA_RULE``) and reports it on test; ``plot`` and ``report`` draw
and state it.
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
from ..scores import check_delta
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import evaluate_point, prepare
from ..workbook.report import pct

DELTA_RULE = (
    "the δ with the highest validation accuracy, averaged over the pruning factors and seeds of the sweep "
    "(ties go to the smaller δ); its accuracy is then reported on the test split"
)


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    deltas: Sequence[float],
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> pd.DataFrame:
    """Validation and test accuracy against δ for several pruning factors.

    One row per (schedule, delta, p, seed); schedules ``one-shot`` and (with fine-tuning)
    ``fine-tuned``. Columns: schedule, delta, p, seed, val_accuracy, test_accuracy, sparsity,
    dense_val_accuracy, dense_test_accuracy.
    """
    bar = progress(total=len(seeds) * len(deltas) * len(pruning_factors), desc="fig4 points")
    rows = []
    for seed in seeds:
        setup = prepare(dataclasses.replace(base, seed=int(seed)), pcfg, cache_root=cache_root, device=device)
        for delta in deltas:
            for p in pruning_factors:
                point = evaluate_point(setup, check_delta(delta), float(p), pcfg, cache_root=cache_root, device=device)
                for schedule, key in (("one-shot", "one_shot"), ("fine-tuned", "fine_tuned")):
                    if point[key] is None:
                        continue
                    rows.append(
                        {
                            "schedule": schedule,
                            "delta": float(delta),
                            "p": float(p),
                            "seed": int(seed),
                            "val_accuracy": point[key]["val"],
                            "test_accuracy": point[key]["test"],
                            "sparsity": point[key]["sparsity"],
                            "dense_val_accuracy": setup.dense_val_accuracy,
                            "dense_test_accuracy": setup.dense_test_accuracy,
                        }
                    )
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def recommend_delta(df: pd.DataFrame, schedule: str = "one-shot") -> dict:
    """The δ the workbook recommends, by ``DELTA_RULE``, chosen on validation data only.

    Returns ``{"delta", "rule", "schedule", "val_accuracy", "test_accuracy", "test_accuracy_by_delta",
    "best_delta_per_p"}`` (accuracies are means over pruning factors and seeds)."""
    sub = df[df["schedule"] == schedule]
    if sub.empty:
        raise ValueError(f"no rows for schedule {schedule!r}; have {sorted(df['schedule'].unique())}")
    by_delta = sub.groupby("delta")[["val_accuracy", "test_accuracy"]].mean().sort_index()
    best = by_delta["val_accuracy"].max()
    delta = float(by_delta.index[np.isclose(by_delta["val_accuracy"], best, rtol=0, atol=1e-9)].min())
    per_p = {}
    for p, g in sub.groupby("p"):
        val = g.groupby("delta")["val_accuracy"].mean().sort_index()
        per_p[float(p)] = float(val.index[np.isclose(val, val.max(), rtol=0, atol=1e-9)].min())
    return {
        "delta": delta,
        "rule": DELTA_RULE,
        "schedule": schedule,
        "val_accuracy": float(by_delta.loc[delta, "val_accuracy"]),
        "test_accuracy": float(by_delta.loc[delta, "test_accuracy"]),
        "test_accuracy_by_delta": {float(d): float(a) for d, a in by_delta["test_accuracy"].items()},
        "best_delta_per_p": per_p,
    }


def report(df: pd.DataFrame, rec: dict) -> str:
    """The Figure 4 section of REPORT.md: the recommended δ and the rule that chose it."""
    by = rec["test_accuracy_by_delta"]
    lines = [
        "## Figure 4 — accuracy against δ",
        "",
        f"Pruning factors {', '.join(f'{p:g}' for p in sorted(df['p'].unique()))}; "
        f"{df['seed'].nunique()} seed(s); δ grid {', '.join(f'{d:g}' for d in sorted(df['delta'].unique()))}.",
        "",
        f"**Recommended δ = {rec['delta']:g}** ({rec['schedule']}), chosen as {rec['rule']}.",
        f"Mean validation accuracy at that δ: {pct(rec['val_accuracy'])}; mean test accuracy: "
        f"{pct(rec['test_accuracy'])} (δ = 0, magnitude: {pct(by.get(0.0, np.nan))}; "
        f"δ = 1, relevance: {pct(by.get(1.0, np.nan))}).",
        "",
        "Best δ on validation data at each pruning factor: "
        + ", ".join(f"p = {p:g}: δ = {d:g}" for p, d in rec["best_delta_per_p"].items())
        + ".",
    ]
    return "\n".join(lines)


def plot(df: pd.DataFrame, recommended: float | None = None) -> Figure:
    """Test accuracy against δ, one line per pruning factor (mean ± sd over seeds), one
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
