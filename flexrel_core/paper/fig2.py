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

from ..parallel import run_tasks
from ..scores import ALL_METHODS, METHODS, check_delta, check_method, method_delta
from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare
from ..workbook.points import evaluate_point
from ..workbook.report import pct
from ..workbook.stats import direction, format_interval, labelled, paired_differences, robust_aggregate, robustness
from .style import METHOD_ORDER, PALETTE, p_axis

SCHEDULES = {"one-shot": "one_shot_accuracy", "fine-tuned": "fine_tuned_accuracy"}
THRESHOLDS = (1.0, 2.0, 5.0)
COMPARED = ("flexrel", "relevance")  # each compared with magnitude, the standard baseline


@dataclasses.dataclass
class SeedSweep:
    """One seed's share of a Figure 2 sweep (a task for ``parallel.run_tasks``): the trained model of
    ``cfg`` (whose ``seed`` it is) pruned by every method of ``methods`` at every factor of
    ``pruning_factors``, in-distribution and, when ``shift`` is non-empty, shifted."""

    cfg: TrainConfig
    pcfg: PruneConfig
    methods: tuple[str, ...]
    pruning_factors: tuple[float, ...]
    delta: float
    shift: dict
    cache_root: str
    device: str

    @property
    def conditions(self) -> dict[str, dict]:
        return {"in-distribution": {}, **({"shifted": self.shift} if self.shift else {})}

    @property
    def points(self) -> int:
        return len(self.methods) * len(self.pruning_factors) * len(self.conditions)


def prepare_sweep(sweep: SeedSweep) -> None:
    """Train (or load) the sweep's dense model and compute (or load) its relevance for every condition."""
    for spec in sweep.conditions.values():
        prepare(sweep.cfg, sweep.pcfg, shift=spec, cache_root=sweep.cache_root, device=sweep.device)


def sweep_rows(sweep: SeedSweep, memo: dict | None = None) -> list[dict]:
    """The rows of ``compute`` for one seed's sweep (every point cached). ``memo``: fine-tuned states
    shared between points (``points.fine_tuned_state``: a magnitude model fine-tuned once serves every
    condition; a longer fine-tuning run serves the shorter budgets)."""
    pcfg, cache_root, device = sweep.pcfg, sweep.cache_root, sweep.device
    setups = {
        c: prepare(sweep.cfg, pcfg, shift=spec, cache_root=cache_root, device=device)
        for c, spec in sweep.conditions.items()
    }
    rows, memo = [], {} if memo is None else memo
    for method in sweep.methods:
        # the paper's methods are FlexRel at δ = 0, 1 or δ (their points keep their keys); others name themselves
        paper = method in METHODS
        d = method_delta(method, sweep.delta) if paper else sweep.delta
        kw = {"cache_root": cache_root, "device": device, **({} if paper else {"method": method})}
        for p in sweep.pruning_factors:
            for condition, setup in setups.items():
                point = evaluate_point(setup, d, float(p), pcfg, memo=memo, **kw)
                tuned = point["fine_tuned"] or {}
                rows.append(
                    {
                        "condition": condition,
                        "method": method,
                        "delta": d if paper or method == "flexrel_taylor" else np.nan,
                        "p": float(p),
                        "seed": int(sweep.cfg.seed),
                        "dense_accuracy": setup.dense_test_accuracy,
                        "one_shot_accuracy": point["one_shot"]["test"],
                        "fine_tuned_accuracy": tuned.get("test", np.nan),
                        "sparsity": point["one_shot"]["sparsity"],
                        "fine_tuned_sparsity": tuned.get("sparsity", np.nan),
                    }
                )
    return rows


def seed_sweeps(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    methods: Sequence[str],
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    delta: float,
    shift: dict | None,
    cache_root: str | Path,
    device: str,
) -> list[SeedSweep]:
    """One ``SeedSweep`` per seed."""
    check_delta(delta)
    for method in methods:
        check_method(method)  # refuses an unknown method before any work
    return [
        SeedSweep(
            dataclasses.replace(base, seed=int(seed)),
            pcfg,
            tuple(methods),
            tuple(float(p) for p in pruning_factors),
            float(delta),
            dict(shift or {}),
            str(cache_root),
            str(device),
        )
        for seed in seeds
    ]


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
    workers: int | None = None,
) -> pd.DataFrame:
    """Test accuracy against pruning factor, one row per (condition, method, p, seed).

    ``condition`` is ``"in-distribution"`` and, when ``shift`` is non-empty, also ``"shifted"``
    (relevance on the shifted inference split, accuracy on the shifted test split). Columns:
    condition, method, delta, p, seed, dense_accuracy, one_shot_accuracy, fine_tuned_accuracy
    (NaN without fine-tuning), sparsity, fine_tuned_sparsity (measured on the weights).

    The seeds' models are trained first, then each (seed, method) sweep is a task for
    ``parallel.run_tasks`` (``workers``: its worker processes; ``None``: one per CPU core)."""
    sweeps = seed_sweeps(
        base, pcfg, methods=methods, pruning_factors=pruning_factors, seeds=seeds, delta=delta, shift=shift,
        cache_root=cache_root, device=device,
    )  # fmt: skip
    run_tasks(prepare_sweep, sweeps, workers=workers, device=device, desc="fig2 models")
    pieces = [dataclasses.replace(s, methods=(m,)) for s in sweeps for m in s.methods]
    parts = run_tasks(sweep_rows, pieces, workers=workers, device=device, desc="fig2 points", units=_sweep_points)
    order = ["condition", "method", "p", "seed"]
    return pd.DataFrame([r for part in parts for r in part]).sort_values(order, kind="stable", ignore_index=True)


def _sweep_points(sweep: SeedSweep) -> int:
    return sweep.points


def long_form(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, schedule, method, p, seed) with its ``accuracy`` and ``dense_accuracy``
    (schedules without values, e.g. fine-tuned when fine-tuning is off, are left out)."""
    df = df if "condition" in df else df.assign(condition="in-distribution")
    parts = []
    for schedule, column in SCHEDULES.items():
        if column in df and df[column].notna().any():
            part = df[["condition", "method", "p", "seed", "dense_accuracy"]].assign(
                schedule=schedule, accuracy=df[column]
            )
            parts.append(part)
    return pd.concat(parts, ignore_index=True)


def differences(df: pd.DataFrame, base: str = "magnitude", others: Sequence[str] = COMPARED) -> pd.DataFrame:
    """Per (condition, schedule, p): the paired per-seed accuracy difference of each of ``others``
    minus ``base`` with its 95 % t-interval (``workbook.stats.paired_differences``; fractions)."""
    return paired_differences(long_form(df), "accuracy", by=["condition", "schedule", "p"], base=base, others=others)


def highest_p_within(drop_points: pd.Series, threshold: float) -> float:
    """Highest p of the grid up to which the accuracy drop (points, indexed by p) stays within
    ``threshold`` at *every* p of the grid; NaN if the smallest p already leaves the band."""
    best = np.nan
    for p, drop in drop_points.sort_index().items():
        if drop > threshold + 1e-9:
            break
        best = float(p)
    return best


def reach(df: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """Per (condition, schedule, threshold, method, seed): ``max_p``, the highest pruning factor up to
    which that seed's accuracy stays within ``threshold`` points of that seed's dense accuracy
    (``highest_p_within``) -- "the pruning factor reached at the same accuracy"."""
    rows = []
    long = long_form(df)
    long = long.assign(drop=100.0 * (long["dense_accuracy"] - long["accuracy"]))
    for key, g in long.groupby(["condition", "schedule", "method", "seed"], sort=False):
        drop = g.set_index("p")["drop"]
        for t in thresholds:
            row = dict(zip(("condition", "schedule", "method", "seed"), key, strict=True))
            rows.append(row | {"threshold_points": float(t), "max_p": highest_p_within(drop, t)})
    return pd.DataFrame(rows)


def summarize(
    df: pd.DataFrame,
    thresholds: Sequence[float] = THRESHOLDS,
    base: str = "magnitude",
    others: Sequence[str] = COMPARED,
) -> pd.DataFrame:
    """Per (condition, schedule, threshold): each method's pruning factor reached within the
    threshold (mean over seeds, ``reach``) and, for each of ``others``, the paired per-seed gain
    over ``base`` -- mean, 95 % t-interval and what the interval supports (``stats.direction``).

    Columns: condition, schedule, threshold_points, n_seeds, max_p_<method>..., and per other
    ``gain_<other>``, ``gain_<other>_ci_low``, ``gain_<other>_ci_high``, ``verdict_<other>`` and
    ``robust_<other>`` (``stats.robustness``: whether a rerun can turn the verdict) and ``pairs_<other>``
    (the seeds where both reach the band: the interval's n)."""
    r = reach(df, thresholds)
    methods = [m for m in ALL_METHODS if m in set(r["method"])]
    diffs = paired_differences(
        r, "max_p", by=["condition", "schedule", "threshold_points"], base=base, others=others
    ).set_index(["condition", "schedule", "threshold_points", "comparison"])
    rows = []
    for key, g in r.groupby(["condition", "schedule", "threshold_points"], sort=False):
        row = dict(zip(("condition", "schedule", "threshold_points"), key, strict=True))
        row["n_seeds"] = int(g["seed"].nunique())
        row |= {f"max_p_{m}": float(g.loc[g["method"] == m, "max_p"].mean()) for m in methods}
        for other in others:
            if (*key, f"{other} - {base}") not in diffs.index:
                continue
            d = diffs.loc[(*key, f"{other} - {base}")]
            row |= {f"gain_{other}": d["mean"], f"gain_{other}_ci_low": d["ci_low"]}
            row |= {f"gain_{other}_ci_high": d["ci_high"], f"verdict_{other}": direction(d["ci_low"], d["ci_high"])}
            row |= {f"robust_{other}": robustness(d["ci_low"], d["ci_high"], n=d["n"]), f"pairs_{other}": d["n"]}
        rows.append(row)
    return pd.DataFrame(rows)


def claim_verdict(directions: Sequence[str]) -> tuple[str, str]:
    """Whether FlexRel reaches higher pruning factors than magnitude at the same accuracy, from what
    the interval of its gain supports at each threshold (``stats.direction``): ``(short, sentence)``."""
    d = [x for x in directions if x != "undetermined"]
    if not d:
        return "undetermined", "too few seeds for an interval at any threshold"
    higher, lower = d.count("higher"), d.count("lower")
    if higher == len(d):
        return "holds", "FlexRel reaches a higher pruning factor than magnitude at every threshold"
    if higher and not lower:
        return (
            "holds partly",
            "FlexRel reaches a higher pruning factor at some thresholds, no detectable difference at the others",
        )
    if lower == len(d):
        return "reversed", "magnitude reaches a higher pruning factor than FlexRel at every threshold"
    if lower and not higher:
        return (
            "does not hold",
            "magnitude reaches a higher pruning factor at some thresholds, no detectable difference at the others",
        )
    if not higher and not lower:
        return "not supported", "no detectable difference between FlexRel and magnitude at any threshold"
    return "mixed", "FlexRel is ahead at some thresholds and behind at others"


def claim_robustness(summary: pd.DataFrame) -> str:
    """Whether ``claim_verdict`` on one condition and schedule of ``summary`` can turn on a rerun
    (``stats.robust_aggregate`` over its thresholds' intervals)."""
    pairs = summary["pairs_flexrel"] if "pairs_flexrel" in summary else summary["n_seeds"]
    intervals = list(zip(summary["gain_flexrel_ci_low"], summary["gain_flexrel_ci_high"], pairs, strict=True))
    return robust_aggregate(lambda d: claim_verdict(d)[0], intervals)


def _points(mean: float, low: float, high: float) -> str:
    return format_interval(mean, low, high, scale=100, unit="points", digits=1)


def _significant(diff: pd.DataFrame, comparison: str) -> tuple[str, str]:
    """The pruning factors where the accuracy difference's interval lies above / below zero, with
    effects; a verdict a rerun can turn is marked *(marginal)*."""
    d = diff[diff["comparison"] == comparison]
    ahead = d[d["ci_low"] > 0]
    behind = d[d["ci_high"] < 0]

    def fmt(rows: pd.DataFrame) -> str:
        return (
            "; ".join(
                labelled(f"p = {r.p:g}: {_points(r.mean, r.ci_low, r.ci_high)}", robustness(r.ci_low, r.ci_high, n=r.n))
                for r in rows.itertuples()
            )
            or "none"
        )

    return fmt(ahead), fmt(behind)


def report(df: pd.DataFrame, summary: pd.DataFrame, *, delta: float, fine_tune_epochs: int) -> str:
    """The Figure 2 section of REPORT.md: dense accuracy; per condition and schedule, the pruning
    factor each method reaches within 1, 2 and 5 points of dense accuracy and FlexRel's paired gain
    over magnitude with its 95 % interval; where the accuracy curves differ; and the verdict on the
    paper's claim computed from those intervals."""
    seeds = sorted(df["seed"].unique())
    grid = sorted(df["p"].unique())
    lines = [
        "## Figure 2 — accuracy against pruning factor",
        "",
        f"FlexRel with δ = {delta:g}; baseline: standard global magnitude pruning (δ = 0, one threshold over the "
        f"whole model); {len(seeds)} seeds (each its own data split and trained model, every method on the same "
        f"ones); pruning factors {', '.join(f'{p:g}' for p in grid)}; fine-tuning {fine_tune_epochs} epoch(s) "
        "with masks fixed (skipped at p = 0). Comparisons are paired over seeds, with 95 % t-intervals "
        "(`fig2_differences.csv`, `fig2_summary.csv`).",
        "",
    ]
    for condition, g in df.groupby("condition", sort=False):
        dense = g.groupby("seed")["dense_accuracy"].first()
        lines.append(
            f"- Dense test accuracy, {condition}: **{pct(dense.mean())}** (seeds: {', '.join(pct(a) for a in dense)})."
        )
    diff = differences(df)
    verdicts = {}
    lines += [
        "",
        "Pruning factor reached within 1, 2 and 5 points of the dense accuracy (mean over seeds of each seed's "
        "highest p whose accuracy, at every p of the grid up to it, stays within the band), and FlexRel's paired "
        "gain over magnitude (*marginal*: a verdict a rerun can turn, see “All verdicts” at the end):",
        "",
        "| condition | schedule | within (points) | magnitude | relevance | FlexRel | FlexRel − magnitude [95 % CI] "
        "| supports |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        gain = format_interval(r.gain_flexrel, r.gain_flexrel_ci_low, r.gain_flexrel_ci_high, digits=3)
        lines.append(
            f"| {r.condition} | {r.schedule} | {r.threshold_points:g} | {r.max_p_magnitude:.3f} | "
            f"{getattr(r, 'max_p_relevance', np.nan):.3f} | {r.max_p_flexrel:.3f} | {gain} | "
            f"{labelled(r.verdict_flexrel, r.robust_flexrel)} |"
        )
    lines.append("")
    for (condition, schedule), g in summary.groupby(["condition", "schedule"], sort=False):
        short, sentence = claim_verdict(g["verdict_flexrel"].tolist())
        verdicts[(condition, schedule)] = labelled(short, claim_robustness(g))
        sub = diff[(diff["condition"] == condition) & (diff["schedule"] == schedule)]
        ahead, behind = _significant(sub, "flexrel - magnitude")
        lines.append(
            f"- {condition}, {schedule}: **{verdicts[(condition, schedule)]}** — {sentence}. Accuracy, FlexRel − "
            f"magnitude, where the interval excludes 0: higher at {ahead}; lower at {behind}."
        )
    ind = [f"{s}: {v}" for (c, s), v in verdicts.items() if c == "in-distribution"]
    shifted = [f"{s}: {v}" for (c, s), v in verdicts.items() if c == "shifted"]
    lines += [
        "",
        "**The paper's claim** (“FlexRel reaches higher pruning factors at the same accuracy”), against global "
        f"magnitude pruning, from the intervals above — in-distribution: {'; '.join(ind)}"
        + (f"; under the inference shift: {'; '.join(shifted)}" if shifted else "")
        + ". Pruning factors are read on the grid above, so equal grid points give a gain of 0.",
    ]
    return "\n".join(lines)


def _difference_limits(ax, d: pd.DataFrame) -> None:
    """Y range of a difference panel: every mean and FlexRel's interval, with a margin (relevance's
    interval can be far wider; its band then leaves the panel)."""
    flexrel = d[d["comparison"] == "flexrel - magnitude"]
    values = pd.concat([d["mean"], flexrel["ci_low"], flexrel["ci_high"]]).dropna()
    if len(values):
        span = max(100 * values.abs().max() * 1.15, 1.0)
        ax.set_ylim(-min(span, 100.0), min(span, 100.0))


def plot(df: pd.DataFrame, diff: pd.DataFrame) -> Figure:
    """Per condition (rows) and schedule (columns): test accuracy against pruning factor per method
    (mean ± one standard deviation over seeds) and, under it, the paired difference to magnitude
    pruning of FlexRel and of relevance pruning (mean and 95 % interval, in points)."""
    conditions = list(dict.fromkeys(df["condition"]))
    schedules = [s for s in SCHEDULES if s in set(diff["schedule"])]
    fig, axes = plt.subplots(
        2 * len(conditions),
        len(schedules),
        figsize=(6.5 * len(schedules), 7.5 * len(conditions)),
        squeeze=False,
        gridspec_kw={"height_ratios": [1.6, 1.0] * len(conditions)},
    )
    methods = [m for m in METHOD_ORDER if m in set(df["method"])]
    for i, condition in enumerate(conditions):
        sub = df[df["condition"] == condition]
        dense = 100 * sub.groupby("seed")["dense_accuracy"].first().mean()
        for j, schedule in enumerate(schedules):
            ax, ax_diff = axes[2 * i, j], axes[2 * i + 1, j]
            data = sub.assign(accuracy=100 * sub[SCHEDULES[schedule]])
            sns.lineplot(
                data=data, x="p", y="accuracy", hue="method", hue_order=methods, palette=PALETTE, errorbar="sd",
                marker="o", ax=ax,
            )  # fmt: skip
            ax.axhline(dense, color="k", ls="--", lw=1, label=f"dense ({dense:.1f} %)")
            p_axis(ax, data["p"])
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{schedule}, {condition} (mean ± sd over {sub['seed'].nunique()} seeds)")
            ax.legend(loc="lower left", fontsize=8)
            d = diff[(diff["condition"] == condition) & (diff["schedule"] == schedule)].sort_values("p")
            for other in COMPARED:
                part = d[d["comparison"] == f"{other} - magnitude"]
                if part.empty:
                    continue
                ax_diff.plot(
                    part["p"], 100 * part["mean"], "o-", ms=3, color=PALETTE[other], label=f"{other} − magnitude"
                )
                ax_diff.fill_between(
                    part["p"], 100 * part["ci_low"], 100 * part["ci_high"], color=PALETTE[other], alpha=0.2, lw=0
                )
            ax_diff.axhline(0, color="k", lw=0.8)
            _difference_limits(ax_diff, d)
            p_axis(ax_diff, d["p"])
            ax_diff.set_ylabel("difference (points)")
            ax_diff.set_title("paired difference to magnitude, mean and 95 % interval", fontsize=9)
            ax_diff.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
