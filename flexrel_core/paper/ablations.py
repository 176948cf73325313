"""Ablations and controls: which of FlexRel's choices matter, and why it wins or loses where it does.

Every variant is FlexRel (or a baseline) with one choice changed, run on the same seeds, trained
models and pruning factors, and compared paired over seeds (95 % t-intervals) with default FlexRel
and with standard global magnitude pruning:

- **normalisation**: min-max over the whole model (default) vs per layer with one global threshold,
  for FlexRel and for magnitude (δ = 0 with per-layer normalisation is *not* standard magnitude
  pruning: it moves the cut between layers);
- **sign** of per-sample relevance before the sum over samples: ``abs`` (default), ``positive``,
  ``signed``;
- **LRP target**: the predicted class (default; inference data has no labels) vs the true label;
- **control**: relevance permuted at random within each layer (``scores.shuffle_within_layers``):
  it keeps how relevance shares the cut between layers and destroys its per-weight ranking, so the
  part of a gain over magnitude that survives the shuffle comes from the allocation between layers;
- **schedule**: reaching p in several prune → fine-tune steps, re-scoring relevance on the pruned
  model between them (``points.iterative_point``), against one step fine-tuned for the same total
  number of epochs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..parallel import run_tasks
from ..scores import method_delta
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare, prepare_seeds
from ..workbook.points import evaluate_point, iterative_point
from ..workbook.stats import format_interval, labelled, paired_differences, robustness
from .style import PALETTE


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row label of the ablations: a method with some ``PruneConfig`` fields changed, pruned in
    one step (``steps == 1``) or iteratively."""

    name: str
    ablation: str
    method: str
    changes: tuple[tuple[str, object], ...] = ()
    steps: int = 1


def variants(steps: int, fine_tune_epochs: int) -> list[Variant]:
    """The variants, grouped by ablation; the iterative ones use ``steps`` steps of
    ``fine_tune_epochs`` epochs, their one-step references ``steps * fine_tune_epochs`` epochs."""
    same = (("fine_tune_epochs", steps * fine_tune_epochs),)
    return [
        Variant("magnitude", "baseline", "magnitude"),
        Variant("FlexRel", "baseline", "flexrel"),
        Variant("FlexRel, per-layer normalisation", "normalisation", "flexrel", (("normalize", "layer"),)),
        Variant("magnitude, per-layer normalisation", "normalisation", "magnitude", (("normalize", "layer"),)),
        Variant("FlexRel, positive relevance", "sign", "flexrel", (("aggregate", "positive"),)),
        Variant("FlexRel, signed relevance", "sign", "flexrel", (("aggregate", "signed"),)),
        Variant("FlexRel, LRP from the true label", "target", "flexrel", (("lrp_target", "label"),)),
        Variant("FlexRel, shuffled relevance", "control", "flexrel", (("relevance_control", "shuffled"),)),
        Variant("relevance", "control", "relevance"),
        Variant("relevance, shuffled", "control", "relevance", (("relevance_control", "shuffled"),)),
        Variant(f"magnitude, {steps} steps", "schedule", "magnitude", (), steps),
        Variant(f"FlexRel, {steps} steps", "schedule", "flexrel", (), steps),
        Variant(f"magnitude, 1 step, {steps * fine_tune_epochs} epochs", "schedule", "magnitude", same),
        Variant(f"FlexRel, 1 step, {steps * fine_tune_epochs} epochs", "schedule", "flexrel", same),
    ]


# Comparisons the report makes, per ablation: (other, base).
COMPARISONS = {
    "normalisation": [
        ("FlexRel, per-layer normalisation", "FlexRel"),
        ("magnitude, per-layer normalisation", "magnitude"),
        ("FlexRel, per-layer normalisation", "magnitude, per-layer normalisation"),
    ],
    "sign": [("FlexRel, positive relevance", "FlexRel"), ("FlexRel, signed relevance", "FlexRel")],
    "target": [("FlexRel, LRP from the true label", "FlexRel")],
    "control": [
        ("FlexRel", "magnitude"),
        ("FlexRel, shuffled relevance", "magnitude"),
        ("FlexRel, shuffled relevance", "FlexRel"),
        ("relevance, shuffled", "relevance"),
    ],
}


def _schedule_comparisons(steps: int, epochs: int) -> list[tuple[str, str]]:
    return [
        (f"FlexRel, {steps} steps", f"FlexRel, 1 step, {steps * epochs} epochs"),
        (f"magnitude, {steps} steps", f"magnitude, 1 step, {steps * epochs} epochs"),
        (f"FlexRel, {steps} steps", f"magnitude, {steps} steps"),
    ]


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    delta: float,
    steps: int = 2,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
    workers: int | None = None,
) -> pd.DataFrame:
    """Every variant at every pruning factor and seed (points cached, shared with Figures 2 and 4
    where they coincide). One row per (ablation, variant, p, seed): method, delta, dense_accuracy,
    one_shot_accuracy (NaN for iterative schedules), fine_tuned_accuracy, sparsity. Each (seed, variant) is a
    task for ``parallel.run_tasks`` (``workers``: its worker processes; ``None``: one per CPU core)."""
    if pcfg.fine_tune_epochs < 1:
        raise ValueError("the ablations compare fine-tuned schedules: fine_tune_epochs must be >= 1")
    todo = variants(steps, pcfg.fine_tune_epochs)
    factors = [float(p) for p in pruning_factors]
    tasks = [
        (dataclasses.replace(base, seed=int(seed)), pcfg, v, factors, float(delta), str(cache_root), device)
        for seed in seeds
        for v in todo
    ]
    prepare_seeds(base, pcfg, seeds, cache_root=cache_root, device=device, workers=workers)
    parts = run_tasks(
        variant_rows, tasks, workers=workers, device=device, desc="ablation points", units=lambda _t: len(factors)
    )
    return pd.DataFrame([r for part in parts for r in part])


def variant_rows(task: tuple) -> list[dict]:
    """The rows of ``compute`` for one (seed, variant): ``(cfg, pcfg, variant, factors, delta,
    cache_root, device)``, a task for ``parallel.run_tasks``."""
    cfg, pcfg, v, factors, delta, cache_root, device = task
    vcfg = dataclasses.replace(pcfg, **dict(v.changes))
    setup = prepare(cfg, vcfg, cache_root=cache_root, device=device)
    d = method_delta(v.method, delta)
    rows = []
    for p in factors:
        row = {"ablation": v.ablation, "variant": v.name, "method": v.method, "delta": d, "p": p}
        row |= {"seed": int(cfg.seed), "dense_accuracy": setup.dense_test_accuracy}
        if v.steps > 1:
            point = iterative_point(setup, d, p, vcfg, v.steps, cache_root=cache_root, device=device)
            row |= {"one_shot_accuracy": np.nan, "fine_tuned_accuracy": point["test"], "sparsity": point["sparsity"]}
        else:
            point = evaluate_point(setup, d, p, vcfg, cache_root=cache_root, device=device)
            row |= {"one_shot_accuracy": point["one_shot"]["test"]}
            row |= {"fine_tuned_accuracy": point["fine_tuned"]["test"], "sparsity": point["one_shot"]["sparsity"]}
        rows.append(row)
    return rows


def differences(df: pd.DataFrame, steps: int, fine_tune_epochs: int) -> pd.DataFrame:
    """Every comparison of ``COMPARISONS`` (and the schedule ones) at every p and schedule: the
    paired per-seed accuracy difference ``other - base`` with its 95 % t-interval (fractions).
    Columns: ablation, schedule, p, comparison, n, mean, sd, ci_low, ci_high."""
    long = pd.concat(
        [
            df.assign(schedule=s, accuracy=df[c])
            for s, c in (("one-shot", "one_shot_accuracy"), ("fine-tuned", "fine_tuned_accuracy"))
        ],
        ignore_index=True,
    ).dropna(subset=["accuracy"])
    pairs = {**COMPARISONS, "schedule": _schedule_comparisons(steps, fine_tune_epochs)}
    parts = []
    for ablation, comparisons in pairs.items():
        for other, base in comparisons:
            d = paired_differences(long, "accuracy", by=["schedule", "p"], method="variant", base=base, others=[other])
            parts.append(d.assign(ablation=ablation))
    out = pd.concat(parts, ignore_index=True)
    return out[["ablation", "schedule", "p", "comparison", "n", "mean", "sd", "ci_low", "ci_high"]]


def _cell(r) -> str:
    return labelled(
        format_interval(r.mean, r.ci_low, r.ci_high, scale=100, digits=1), robustness(r.ci_low, r.ci_high, n=r.n)
    )


def _shuffle_sentence(diff: pd.DataFrame) -> str:
    """How much of FlexRel's gain over magnitude survives the shuffle, where FlexRel is ahead."""
    d = diff[diff["schedule"] == "fine-tuned"].set_index(["comparison", "p"])
    gain = d.loc["FlexRel - magnitude"]
    ahead = gain[gain["ci_low"] > 0]
    if ahead.empty:
        return (
            "FlexRel is not ahead of magnitude (fine-tuned) at any of these pruning factors, so there is no gain "
            "to decompose; the shuffled variant's differences are listed above."
        )
    parts = []
    for p, r in ahead.iterrows():
        shuffled = d.loc[("FlexRel, shuffled relevance - magnitude", p), "mean"]
        part = f"p = {p:g}: {100 * shuffled / r['mean']:.0f} % of {100 * r['mean']:.1f} points"
        parts.append(labelled(part, robustness(r["ci_low"], r["ci_high"], n=r["n"])))
    return (
        "Where FlexRel beats magnitude (fine-tuned), the share of its gain that survives the shuffle — the part "
        "due to how relevance shares the cut between layers rather than which weights it ranks high — is "
        + "; ".join(parts)
        + "."
    )


def report(df: pd.DataFrame, diff: pd.DataFrame, *, delta: float, steps: int, fine_tune_epochs: int) -> str:
    """The ablations section of REPORT.md: per ablation, each comparison's paired difference at every
    pruning factor (fine-tuned; one-shot in the CSV), and the share of FlexRel's gain that survives
    the shuffled-relevance control."""
    ps = sorted(df["p"].unique())
    lines = [
        "## Ablations and controls",
        "",
        f"FlexRel δ = {delta:g}; {df['seed'].nunique()} seeds; pruning factors {', '.join(f'{p:g}' for p in ps)} "
        f"(across the knee of Figure 2); fine-tuned {fine_tune_epochs} epoch(s) per step; iterative schedules in "
        f"{steps} steps. Cells: paired test-accuracy difference in points, mean [95 % t-interval] over seeds, "
        "after fine-tuning (`ablations_differences.csv` also holds one-shot); *(marginal)*: a verdict a rerun can "
        "turn.",
        "",
    ]
    titles = {
        "normalisation": "Normalisation (whole model vs per layer)",
        "sign": "Sign of relevance",
        "target": "LRP target",
        "control": "Shuffled-relevance control",
        "schedule": "Iterative schedule",
    }
    for ablation, title in titles.items():
        sub = diff[(diff["ablation"] == ablation) & (diff["schedule"] == "fine-tuned")]
        if sub.empty:
            continue
        lines += [f"### {title}", "", "| comparison | " + " | ".join(f"p = {p:g}" for p in ps) + " |"]
        lines.append("|---" * (len(ps) + 1) + "|")
        for comparison, g in sub.groupby("comparison", sort=False):
            cells = {r.p: _cell(r) for r in g.itertuples()}
            lines.append(f"| {comparison} | " + " | ".join(cells.get(p, "—") for p in ps) + " |")
        lines.append("")
        if ablation == "control":
            lines += [_shuffle_sentence(diff[diff["ablation"] == "control"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def plot(diff: pd.DataFrame) -> Figure:
    """One panel per ablation: each comparison's fine-tuned accuracy difference (points) against p,
    mean and 95 % interval."""
    sub = diff[diff["schedule"] == "fine-tuned"]
    ablations = list(dict.fromkeys(sub["ablation"]))
    fig, axes = plt.subplots(1, len(ablations), figsize=(4.6 * len(ablations), 3.8), squeeze=False, sharey=True)
    colours = [PALETTE["flexrel"], PALETTE["magnitude"], PALETTE["relevance"], "#9467bd"]
    for ax, ablation in zip(axes[0], ablations, strict=True):
        for colour, (comparison, g) in zip(
            colours, sub[sub["ablation"] == ablation].groupby("comparison", sort=False), strict=False
        ):
            g = g.sort_values("p")
            ax.errorbar(
                g["p"], 100 * g["mean"], yerr=[100 * (g["mean"] - g["ci_low"]), 100 * (g["ci_high"] - g["mean"])],
                fmt="o-", ms=3, capsize=3, color=colour, label=comparison,
            )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(ablation)
        ax.set_xlabel("pruning factor p")
        ax.legend(fontsize=6.5, loc="best")
    axes[0][0].set_ylabel("accuracy difference, fine-tuned (points)")
    fig.tight_layout()
    return fig
