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

from ..parallel import run_tasks
from ..scores import check_delta
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare, prepare_seeds
from ..workbook.points import evaluate_point
from ..workbook.report import pct
from ..workbook.stats import format_interval, labelled, robustness, t_interval

USEFUL_WITHIN = 5.0  # points below dense validation accuracy that still count as a working model
DELTA_RULE = (
    "the δ with the highest validation accuracy, averaged over the seeds and the pruning factors of the useful "
    "range (ties go to the smaller δ); its accuracy is then reported on the test split"
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
    workers: int | None = None,
) -> pd.DataFrame:
    """Validation and test accuracy against δ for several pruning factors.

    One row per (schedule, delta, p, seed); schedules ``one-shot`` and (with fine-tuning)
    ``fine-tuned``. Columns: schedule, delta, p, seed, val_accuracy, test_accuracy, sparsity,
    dense_val_accuracy, dense_test_accuracy. Each (seed, δ) is a task for ``parallel.run_tasks``
    (``workers``: its worker processes; ``None``: one per CPU core).
    """
    factors = [float(p) for p in pruning_factors]
    tasks = [
        (dataclasses.replace(base, seed=int(seed)), pcfg, check_delta(delta), factors, str(cache_root), device)
        for seed in seeds
        for delta in deltas
    ]
    prepare_seeds(base, pcfg, seeds, cache_root=cache_root, device=device, workers=workers)
    parts = run_tasks(
        delta_rows, tasks, workers=workers, device=device, desc="fig4 points", units=lambda _t: len(factors)
    )
    return pd.DataFrame([r for part in parts for r in part])


def delta_rows(task: tuple) -> list[dict]:
    """The rows of ``compute`` for one (seed, δ): ``(cfg, pcfg, delta, factors, cache_root, device)``,
    a task for ``parallel.run_tasks``."""
    cfg, pcfg, delta, factors, cache_root, device = task
    setup = prepare(cfg, pcfg, cache_root=cache_root, device=device)
    rows = []
    for p in factors:
        point = evaluate_point(setup, delta, p, pcfg, cache_root=cache_root, device=device)
        for schedule, key in (("one-shot", "one_shot"), ("fine-tuned", "fine_tuned")):
            if point[key] is None:
                continue
            rows.append(
                {
                    "schedule": schedule,
                    "delta": float(delta),
                    "p": p,
                    "seed": int(cfg.seed),
                    "val_accuracy": point[key]["val"],
                    "test_accuracy": point[key]["test"],
                    "sparsity": point[key]["sparsity"],
                    "dense_val_accuracy": setup.dense_val_accuracy,
                    "dense_test_accuracy": setup.dense_test_accuracy,
                }
            )
    return rows


def useful_range(df: pd.DataFrame, within: float = USEFUL_WITHIN) -> tuple[list[float], str]:
    """The pruning factors where pruned models still work: those at which magnitude pruning (δ = 0)
    keeps its mean *validation* accuracy (over seeds) within ``within`` points of the mean dense
    validation accuracy -- fine-tuned when the sweep fine-tunes, else one-shot. Returns the factors
    and the schedule that defined them; if none qualifies, the smallest factor of the grid."""
    schedule = "fine-tuned" if "fine-tuned" in set(df["schedule"]) else "one-shot"
    mag = df[(df["schedule"] == schedule) & (df["delta"] == 0.0)]
    if mag.empty:
        raise ValueError("the δ grid must include 0 (magnitude pruning) to define the useful range")
    drop = 100 * (mag.groupby("p")["dense_val_accuracy"].mean() - mag.groupby("p")["val_accuracy"].mean())
    useful = [float(p) for p, d in drop.sort_index().items() if d <= within + 1e-9]
    return (useful or [float(drop.index.min())]), schedule


def _best(val: pd.Series) -> float:
    """The δ of the highest value (ties: the smaller δ)."""
    return float(val.index[np.isclose(val, val.max(), rtol=0, atol=1e-9)].min())


def recommend_delta(df: pd.DataFrame, schedule: str = "fine-tuned", within: float = USEFUL_WITHIN) -> dict:
    """The δ the workbook recommends for ``schedule``, by ``DELTA_RULE``, chosen on validation data only.

    Returns ``{"delta", "robust", "rule", "schedule", "useful_p", "range_schedule", "val_accuracy",
    "test_accuracy", "test_accuracy_by_delta", "best_delta_per_seed", "best_delta_per_p",
    "test_gain_over_magnitude"}`` (accuracies: means over the useful pruning factors and seeds;
    the gain is the paired per-seed test-accuracy difference δ_rec − δ = 0 with its t-interval;
    ``robust``: ``"robust"`` when every leave-one-seed-out subsample recommends the same δ,
    ``"marginal"`` when not, ``"undetermined"`` under 3 seeds)."""
    rec = _recommend(df, schedule, within)
    seeds = sorted(df["seed"].unique())
    others = {_recommend(df[df["seed"] != s], schedule, within)["delta"] for s in seeds} if len(seeds) >= 3 else set()
    rec["robust"] = "undetermined" if not others else ("robust" if others == {rec["delta"]} else "marginal")
    return rec


def _recommend(df: pd.DataFrame, schedule: str, within: float) -> dict:
    sub = df[df["schedule"] == schedule]
    if sub.empty:
        raise ValueError(f"no rows for schedule {schedule!r}; have {sorted(df['schedule'].unique())}")
    useful, range_schedule = useful_range(df, within)
    sub = sub[sub["p"].isin(useful)]
    by_delta = sub.groupby("delta")[["val_accuracy", "test_accuracy"]].mean().sort_index()
    delta = _best(by_delta["val_accuracy"])
    per_seed = {int(s): _best(g.groupby("delta")["val_accuracy"].mean()) for s, g in sub.groupby("seed")}
    per_p = {float(p): _best(g.groupby("delta")["val_accuracy"].mean()) for p, g in sub.groupby("p")}
    seed_means = sub.groupby(["seed", "delta"])["test_accuracy"].mean().unstack("delta")
    gain = t_interval((seed_means[delta] - seed_means[0.0]).tolist()) if 0.0 in seed_means else t_interval([])
    return {
        "delta": delta,
        "rule": DELTA_RULE,
        "schedule": schedule,
        "useful_p": useful,
        "range_schedule": range_schedule,
        "within": within,
        "val_accuracy": float(by_delta.loc[delta, "val_accuracy"]),
        "test_accuracy": float(by_delta.loc[delta, "test_accuracy"]),
        "test_accuracy_by_delta": {float(d): float(a) for d, a in by_delta["test_accuracy"].items()},
        "best_delta_per_seed": per_seed,
        "best_delta_per_p": per_p,
        "test_gain_over_magnitude": gain,
    }


def _gain(g: dict) -> str:
    return format_interval(g["mean"], g["ci_low"], g["ci_high"], scale=100, unit="points", digits=1)


def report(df: pd.DataFrame, recs: Sequence[dict], profile_delta: float) -> str:
    """The Figure 4 section of REPORT.md: the useful range, the recommended δ per schedule with its
    spread over seeds and its paired test gain over magnitude, and whether it agrees with the δ
    that Figures 1-3 use (the profile's ``delta``)."""
    first = recs[0]
    lines = [
        "## Figure 4 — accuracy against δ",
        "",
        f"Pruning factors {', '.join(f'{p:g}' for p in sorted(df['p'].unique()))}; "
        f"{df['seed'].nunique()} seeds; δ grid {', '.join(f'{d:g}' for d in sorted(df['delta'].unique()))}.",
        f"Useful range (pruned models that still work): the pruning factors at which {first['range_schedule']} "
        f"magnitude pruning stays within {first['within']:g} points of the dense validation accuracy — "
        f"p = {', '.join(f'{p:g}' for p in first['useful_p'])}. δ is chosen as {first['rule']}.",
        "",
    ]
    for rec in recs:
        by = rec["test_accuracy_by_delta"]
        g = rec["test_gain_over_magnitude"]
        spread = ", ".join(f"{d:g}" for d in rec["best_delta_per_seed"].values())
        chosen = labelled(f"recommended δ = {rec['delta']:g}", rec["robust"])
        lines.append(
            f"- **{rec['schedule']}: {chosen}** (best δ per seed: {spread}; robust when every leave-one-seed-out "
            f"subsample recommends the same δ). Mean "
            f"validation accuracy {pct(rec['val_accuracy'])}; test accuracy {pct(rec['test_accuracy'])} "
            f"(δ = 0, magnitude: {pct(by.get(0.0, np.nan))}; δ = 1, relevance: {pct(by.get(1.0, np.nan))}); "
            f"paired test gain over magnitude {labelled(_gain(g), robustness(g['ci_low'], g['ci_high'], n=g['n']))}."
        )
    agree = [r["schedule"] for r in recs if abs(r["delta"] - profile_delta) < 1e-9]
    verdict = (
        f"agrees ({', '.join(agree)})"
        if agree
        else "differs: the figures use a δ fixed in advance, not tuned on these runs"
    )
    lines += [
        "",
        f"Figures 1–3 and the cost table use δ = {profile_delta:g} (the profile's `delta`, one shared value); "
        f"Figure 4's recommendation {verdict}.",
    ]
    return "\n".join(lines)


def plot(df: pd.DataFrame, recommended: dict[str, float] | None = None) -> Figure:
    """Test accuracy against δ, one line per pruning factor (mean ± sd over seeds), one panel per
    schedule; the δ recommended for that schedule (chosen on validation data) as a vertical line."""
    schedules = list(dict.fromkeys(df["schedule"]))
    fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.2), squeeze=False)
    for ax, schedule in zip(axes[0], schedules, strict=True):
        data = df[df["schedule"] == schedule].assign(accuracy=lambda d: 100 * d["test_accuracy"])
        data = data.sort_values("p").assign(p=data.sort_values("p")["p"].map(lambda p: f"p = {p:g}"))
        # One hue, marker and dash pattern per pruning factor: neighbouring factors stay apart.
        sns.lineplot(
            data=data, x="delta", y="accuracy", hue="p", style="p", markers=True, dashes=True, errorbar="sd", ax=ax,
            palette="tab10",
        )  # fmt: skip
        if recommended and schedule in recommended:
            delta = recommended[schedule]
            ax.axvline(delta, color="crimson", ls="--", lw=1.2, label=f"recommended δ = {delta:g}")
        ax.set_xlabel("δ (0 = magnitude, 1 = relevance)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{schedule} (mean ± sd over {df['seed'].nunique()} seeds)")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
