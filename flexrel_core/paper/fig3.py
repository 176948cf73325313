"""Figure 3: learning time and transmitted data to reach an accuracy target, measured over seeds.

``compute`` runs ``federated.simulate`` for every seed, technique and pruning factor (plus the
unpruned reference), each starting from the trained dense model of its seed. The primary view is
accuracy against cumulative transmitted bytes and against elapsed time (``curves``: mean and 95 %
interval over seeds). The paper's figure is derived from it: for each target and seed, the least
data (and the time) with which each technique reaches the target over the pruning factors tried
(``select_for_targets``); ``savings`` compares FlexRel with magnitude, relevance-only and no pruning,
paired over seeds; ``report`` states the verdict on "saving over 35 % bandwidth for typical
accuracy targets" against magnitude (the strict reading) and what the other baselines give.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..encoding import decode_sparse, encode_sparse
from ..masks import load_state
from ..progress import progress
from ..training import evaluate
from ..workbook.config import FedConfig, PruneConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import prepare
from ..workbook.report import pct
from ..workbook.stats import direction, format_interval, t_interval
from .federated import simulate
from .style import LABELS, PALETTE

PANELS = ("magnitude", "flexrel", "relevance")  # (a) magnitude and (b) FlexRel as in the paper, (c) relevance
BASELINES = ("magnitude", "relevance", "dense")  # what FlexRel's saving is measured against
CLAIM = 0.35


@dataclasses.dataclass
class SweepResult:
    """Every run: per-round and per-node tables, the final global states of the first seed's runs, and
    the size of the test split accuracy is measured on (per seed)."""

    rounds: pd.DataFrame
    traffic: pd.DataFrame
    states: dict[tuple[str, float], dict]
    test_samples: dict[int, int]


def compute(
    base: TrainConfig,
    pcfg: PruneConfig,
    cfg: FedConfig,
    *,
    seeds: Sequence[int],
    techniques: Sequence[str],
    amounts: Sequence[float],
    delta: float,
    dense_baseline: bool = True,
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
) -> SweepResult:
    """``federated.simulate`` for every seed, technique and pruning factor (plus one unpruned run per
    seed if ``dense_baseline``); every technique sees the same seeds, so comparisons are paired."""
    runs = [(t, float(a)) for t in techniques for a in amounts] + ([("dense", 0.0)] if dense_baseline else [])
    bar = progress(total=len(seeds) * len(runs), desc="fig3 runs")
    rounds, traffic, states, test_samples = [], [], {}, {}
    for seed in seeds:
        setup = prepare(dataclasses.replace(base, seed=int(seed)), pcfg, cache_root=cache_root, device=device)
        test_samples[int(seed)] = len(setup.data.test)
        for technique, amount in runs:
            try:
                res = simulate(
                    setup, pcfg, cfg, technique, amount, delta=delta, cache_root=cache_root, threads=threads,
                    device=device,
                )  # fmt: skip
            except Exception as err:
                raise RuntimeError(f"Figure 3 run failed at seed {seed}, {technique}, p = {amount:g}: {err}") from err
            rounds += res["rounds"]
            traffic += res["traffic"]
            if seed == seeds[0]:
                states[(technique, amount)] = res["state"]
            bar.update()
    bar.close()
    first = ["seed", "technique", "amount", "round", "eligible", "accuracy", "elapsed_s", "mb"]
    df = pd.DataFrame(rounds)
    return SweepResult(
        df[first + [c for c in df.columns if c not in first]], pd.DataFrame(traffic), states, test_samples
    )


def curves(rounds: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against transmitted data and time: per (technique, amount, round), the mean over seeds
    of accuracy (with its 95 % t-interval, clipped to [0, 1]), cumulative megabytes and elapsed seconds."""
    rows = []
    for (technique, amount, r), g in rounds.groupby(["technique", "amount", "round"], sort=False):
        acc = t_interval(g["accuracy"].tolist())
        rows.append(
            {"technique": technique, "amount": amount, "round": r, "n": acc["n"], "accuracy": acc["mean"]}
            | {"accuracy_ci_low": max(acc["ci_low"], 0.0), "accuracy_ci_high": min(acc["ci_high"], 1.0)}
            | {"mb": float(g["mb"].mean()), "elapsed_s": float(g["elapsed_s"].mean())}
        )
    return pd.DataFrame(rows)


def select_for_targets(rounds: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """For each seed, target and technique, the pruning factor reaching the target with the least data.

    ``rounds`` needs columns seed (optional), technique, amount, round, accuracy, elapsed_s, mb and
    eligible (optional). Per factor the first eligible round with accuracy >= target counts; among
    factors the least ``mb`` wins, ties going to less time, then to the larger factor. A technique
    that never reaches the target gets ``reached=False`` and NaN numbers."""
    df = rounds if "eligible" in rounds else rounds.assign(eligible=True)
    df = df if "seed" in df else df.assign(seed=0)
    df = df[df["eligible"]].sort_values(["seed", "technique", "amount", "round"])
    out = []
    for target in targets:
        for (seed, technique), group in df.groupby(["seed", "technique"], sort=False):
            hits = group[group["accuracy"] >= target - 1e-9].groupby("amount").head(1)
            row = {"target": float(target), "seed": int(seed), "technique": technique, "reached": not hits.empty}
            if hits.empty:
                row |= dict.fromkeys(("amount", "round", "elapsed_s", "mb", "accuracy"), np.nan)
            else:
                best = hits.assign(neg=-hits["amount"]).sort_values(["mb", "elapsed_s", "neg"]).iloc[0]
                row |= {k: float(best[k]) for k in ("amount", "round", "elapsed_s", "mb", "accuracy")}
            out.append(row)
    return pd.DataFrame(out)


def savings(selection: pd.DataFrame, other: str = "flexrel", bases: Sequence[str] = BASELINES) -> pd.DataFrame:
    """Per target and baseline: the data saving of ``other``, 1 - mb_other / mb_base, paired per seed
    over the seeds where both reach the target, with its 95 % t-interval; also the time saving and
    how many seeds each side reached the target on."""
    wide = selection.pivot_table(
        index=["target", "seed"], columns="technique", values=["mb", "elapsed_s"], dropna=False
    )
    reached = selection.pivot_table(index="target", columns="technique", values="reached", aggfunc="sum")
    rows = []
    for target in sorted(selection["target"].unique()):
        w = wide.loc[target]
        for base in bases:
            if ("mb", base) not in w or ("mb", other) not in w:
                continue
            both = w[[("mb", base), ("mb", other)]].dropna().index
            mb = t_interval((1 - w.loc[both, ("mb", other)] / w.loc[both, ("mb", base)]).tolist())
            time = t_interval((1 - w.loc[both, ("elapsed_s", other)] / w.loc[both, ("elapsed_s", base)]).tolist())
            rows.append(
                {"target": target, "baseline": base, "n": mb["n"], "saving": mb["mean"], "ci_low": mb["ci_low"]}
                | {"ci_high": mb["ci_high"], "time_saving": time["mean"]}
                | {f"mb_{base}": float(w.loc[both, ("mb", base)].mean()) if len(both) else np.nan}
                | {f"mb_{other}": float(w.loc[both, ("mb", other)].mean()) if len(both) else np.nan}
                | {
                    f"reached_{base}": int(reached.loc[target, base]),
                    f"reached_{other}": int(reached.loc[target, other]),
                }
            )
    return pd.DataFrame(rows)


def half_precision_effect(
    result: SweepResult,
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    seed: int,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "cpu",
) -> pd.DataFrame:
    """Test accuracy and bytes of the final models of seed ``seed`` (the sweep's first) sent in
    float32 vs float16 (``encode_sparse(half=True)``)."""
    setup = prepare(dataclasses.replace(base, seed=int(seed)), pcfg, cache_root=cache_root, device=device)
    rows = []
    for (technique, amount), state in result.states.items():
        model = load_state(setup.fresh_model(), state)
        blob32, blob16 = encode_sparse(model), encode_sparse(model, half=True)
        acc32 = evaluate(model, setup.data.test, device=device)
        acc16 = evaluate(decode_sparse(blob16, copy.deepcopy(model)), setup.data.test, device=device)
        rows.append(
            {"technique": technique, "amount": amount, "accuracy_fp32": acc32, "accuracy_fp16": acc16}
            | {"bytes_fp32": len(blob32), "bytes_fp16": len(blob16), "accuracy_change": acc16 - acc32}
        )
    return pd.DataFrame(rows)


def plot(selection: pd.DataFrame, panels: Sequence[str] = PANELS) -> Figure:
    """The paper's Figure 3: elapsed learning time against accuracy target, one panel per technique
    ((a) magnitude, (b) FlexRel, (c) relevance only), mean and 95 % interval over the seeds that
    reach the target, each point annotated with the mean megabytes sent and the seeds reaching it;
    the unpruned runs, where present, as a grey reference line."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), sharey=True, squeeze=False)
    summary = _by_target(selection)
    dense = summary[summary["technique"] == "dense"]
    for ax, technique, letter in zip(axes[0], panels, "abcdefgh", strict=False):
        if not dense.empty:
            ax.plot(dense["target"], dense["elapsed_s"], ls="--", color=PALETTE["dense"], lw=1, label=LABELS["dense"])
        part = summary[summary["technique"] == technique]
        ax.errorbar(
            part["target"], part["elapsed_s"], yerr=[part["elapsed_s"] - part["low"], part["high"] - part["elapsed_s"]],
            fmt="o-", capsize=3, color=PALETTE[technique], label=LABELS[technique],
        )  # fmt: skip
        for r in part.itertuples():
            ax.annotate(f"{r.mb:.2f} MB\n{r.n}/{r.seeds}", (r.target, r.elapsed_s), fontsize=6.5,
                        textcoords="offset points", xytext=(0, 7), ha="center")  # fmt: skip
        ax.set_title(f"({letter}) {LABELS[technique]}")
        ax.set_xlabel("accuracy target")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("elapsed learning time (s)")
    fig.tight_layout()
    return fig


def _by_target(selection: pd.DataFrame) -> pd.DataFrame:
    """Per (technique, target): mean time and data over the seeds that reach it, interval, counts."""
    rows = []
    for (technique, target), g in selection.groupby(["technique", "target"], sort=False):
        hit = g[g["reached"].astype(bool)]
        t = t_interval(hit["elapsed_s"].tolist())
        if not len(hit):
            continue
        low, high = (t["ci_low"], t["ci_high"]) if t["n"] > 1 else (t["mean"], t["mean"])
        rows.append(
            {"technique": technique, "target": target, "elapsed_s": t["mean"], "low": low, "high": high}
            | {"mb": float(hit["mb"].mean()), "n": len(hit), "seeds": g["seed"].nunique()}
        )
    return pd.DataFrame(rows, columns=["technique", "target", "elapsed_s", "low", "high", "mb", "n", "seeds"])


def plot_curves(curve: pd.DataFrame, amounts: Sequence[float] | None = None) -> Figure:
    """The primary view: test accuracy against cumulative transmitted megabytes (left) and against
    elapsed time (right), per technique at the pruning factors ``amounts`` (default: a few across
    the grid), mean and 95 % interval over seeds."""
    grid = sorted(curve.loc[curve["technique"] != "dense", "amount"].unique())
    amounts = amounts if amounts is not None else sorted({grid[0], grid[len(grid) // 2], grid[-1]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    styles = ["-", "--", ":", "-."]
    for (technique, amount), g in curve.groupby(["technique", "amount"], sort=False):
        if technique != "dense" and amount not in amounts:
            continue
        ls = "-" if technique == "dense" else styles[list(amounts).index(amount) % len(styles)]
        label = LABELS[technique] + ("" if technique == "dense" else f", p = {amount:g}")
        for ax, x in zip(axes, ("mb", "elapsed_s"), strict=True):
            ax.plot(g[x], 100 * g["accuracy"], ls, marker="o", ms=2.5, color=PALETTE[technique], label=label)
            ax.fill_between(g[x], 100 * g["accuracy_ci_low"], 100 * g["accuracy_ci_high"], color=PALETTE[technique],
                            alpha=0.12, lw=0)  # fmt: skip
    axes[0].set_xlabel("transmitted data, cumulative (MB)")
    axes[1].set_xlabel("elapsed learning time (s)")
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def _verdict(s: pd.Series, claim: float) -> str:
    if s["n"] < 2:
        return "undetermined"
    if s["ci_low"] > claim:
        return "holds"
    if s["ci_high"] < claim:
        return "does not hold"
    return "undetermined"


def _evaluation_set(test_samples: Mapping[int, int] | None, selection: pd.DataFrame) -> str:
    """The evaluation set's size and the standard error of one accuracy on it, as a parenthesis for
    the report ("" when sizes are not given)."""
    if not test_samples:
        return ""
    sizes = sorted(set(test_samples.values()))
    n = min(sizes)
    a = float(np.median(selection["target"].unique()))
    se = 100 * math.sqrt(a * (1 - a) / n)
    shown = f"{n}" if len(sizes) == 1 else f"{n}–{max(sizes)}"
    return f" ({shown} images: the standard error of one accuracy near {a:.0%} is {se:.1f} points)"


def report(
    selection: pd.DataFrame,
    saving: pd.DataFrame,
    half: pd.DataFrame | None,
    cfg: FedConfig,
    *,
    amounts: Sequence[float],
    delta: float,
    test_samples: Mapping[int, int] | None = None,
    claim: float = CLAIM,
) -> str:
    """The Figure 3 section of REPORT.md: the scenario, FlexRel's data saving per target against each
    baseline (mean and 95 % interval over seeds), and the verdict on the paper's claim.
    ``test_samples`` (``SweepResult.test_samples``) gives the evaluation set's size and, at the
    middle target, the binomial standard error of one accuracy measured on it."""
    seeds = selection["seed"].nunique()
    steps = (
        f"{cfg.local_steps} mini-batches of {cfg.local_batch_size}"
        if cfg.local_steps
        else f"{cfg.local_epochs} epoch(s)"
    )
    lines = [
        "## Figure 3 — learning time and transmitted data to reach an accuracy target",
        "",
        f"Scenario: the dense model trained to convergence (the same one the other figures prune, one per seed) is "
        f"pruned once at the server with each technique (FlexRel δ = {delta:g}), then learnt cooperatively by "
        f"{cfg.nodes} nodes holding {cfg.partition} shards of the training split, by federated averaging for "
        f"{cfg.rounds} rounds with fixed masks (each node trains {steps} per round). No dense warm-up traffic: the "
        f"starting model was trained centrally. Node speed {cfg.node_flops / 1e9:g} GFLOP/s, links "
        f"{cfg.bandwidth_bps / 1e6:g} Mbit/s, latency {1e3 * cfg.latency_s:g} ms. Data = real `encode_sparse` bytes, "
        f"down and up, all nodes. Pruning factors tried: {', '.join(f'{a:g}' for a in amounts)}; {seeds} seeds. "
        f"Accuracy is measured on the test split of each seed{_evaluation_set(test_samples, selection)}; a target "
        "counts at the first round of learning "
        "reaching it, with the factor that needs the least data (`fig3_targets.csv`; curves in `fig3_curves.csv`).",
        "",
        "FlexRel's data saving, 1 − MB(FlexRel) / MB(baseline), paired over the seeds where both reach the target "
        "(mean [95 % t-interval], seeds):",
        "",
        "| target | vs magnitude | vs relevance only | vs no pruning |",
        "|---|---|---|---|",
    ]
    table = saving.set_index(["target", "baseline"])
    for target in sorted(saving["target"].unique()):
        cells = []
        for base in BASELINES:
            if (target, base) not in table.index:
                cells.append("—")
                continue
            r = table.loc[(target, base)]
            cells.append(f"{format_interval(r['saving'], r['ci_low'], r['ci_high'], 100, '%', 1)} (n = {int(r['n'])})")
        lines.append(f"| {target:.3f} | " + " | ".join(cells) + " |")
    lines += ["", _claim_sentence(saving, claim)]
    if half is not None and not half.empty:
        ratio = float((half["bytes_fp16"] / half["bytes_fp32"]).mean())
        lines += [
            "",
            f"**Half precision** (float16 values, `encode_sparse(half=True)`) on the first seed's final models: "
            f"{pct(ratio)} of the float32 bytes on average; test accuracy changes by "
            f"{half['accuracy_change'].min():+.4f} to {half['accuracy_change'].max():+.4f}.",
        ]
    return "\n".join(lines) + "\n"


def _claim_sentence(saving: pd.DataFrame, claim: float) -> str:
    """The verdict on "over 35 % bandwidth" against magnitude, and what the other baselines give."""
    mag = saving[saving["baseline"] == "magnitude"]
    verdicts = [_verdict(r, claim) for _, r in mag.iterrows()]
    counts = {v: verdicts.count(v) for v in ("holds", "does not hold", "undetermined")}
    better = [direction(r["ci_low"], r["ci_high"]) for _, r in mag.iterrows()]
    text = (
        f"**Paper's claim** (“saving over {pct(claim)} bandwidth for typical accuracy targets”), against magnitude "
        f"pruning: the interval lies above {pct(claim)} at {counts['holds']} of {len(mag)} targets, below it at "
        f"{counts['does not hold']}, and straddles it (or too few seeds reach the target) at {counts['undetermined']}. "
        f"FlexRel needs significantly less data than magnitude at {better.count('higher')} targets and significantly "
        f"more at {better.count('lower')}. "
    )
    if counts["holds"] == len(mag) and len(mag):
        text += "**The claim holds here.**"
    elif counts["holds"] == 0:
        text += "**The claim does not hold here** against magnitude pruning."
    else:
        text += "**The claim holds here only at some targets.**"
    for base in ("relevance", "dense"):
        sub = saving[saving["baseline"] == base]
        if len(sub):
            above = sum(_verdict(r, claim) == "holds" for _, r in sub.iterrows())
            text += (
                f" Against {LABELS[base]}, the saving's interval lies above {pct(claim)} at {above} of {len(sub)} "
                "targets."
            )
    return text
