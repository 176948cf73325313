"""Figure 3: elapsed learning time against the accuracy target, each point annotated with the data sent.

The cooperative-learning runs come from ``federated`` (one per technique and pruning factor, plus
an unpruned reference). ``select_for_targets`` picks, for each accuracy target and technique, the
pruning factor that reaches it with the least data; ``bandwidth_savings`` compares FlexRel with
magnitude; ``half_precision_effect`` measures float16 transmission; ``plot`` draws the figure and
``report`` states the verdict on the paper's claim ("saving over 35 % bandwidth for typical
accuracy targets").
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import DataSplits
from ..encoding import decode_sparse, encode_sparse
from ..masks import load_state
from ..progress import progress
from ..scores import METHODS
from ..training import evaluate
from ..workbook.config import FedConfig, TrainConfig
from ..workbook.paths import REPO_ROOT
from ..workbook.pipeline import data_for, new_model
from ..workbook.report import pct
from .federated import simulate
from .style import LABELS, PALETTE

PANELS = ("magnitude", "flexrel", "relevance")  # (a) magnitude and (b) FlexRel as in the paper, (c) relevance


@dataclasses.dataclass
class SweepResult:
    """Every run of a sweep: per-round and per-node tables, and each run's final global state."""

    rounds: pd.DataFrame
    traffic: pd.DataFrame
    states: dict[tuple[str, float], dict]


def compute(
    train_cfg: TrainConfig,
    cfg: FedConfig,
    techniques: Sequence[str] = METHODS,
    amounts: Sequence[float] = (0.5, 0.7, 0.9),
    *,
    dense_baseline: bool = True,
    data: DataSplits | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    threads: int | None = 1,
    device: str = "cpu",
) -> SweepResult:
    """``federated.simulate`` every technique at every pruning factor (plus one unpruned run if ``dense_baseline``)."""
    data = data if data is not None else data_for(train_cfg)
    runs = [(t, float(a)) for t in techniques for a in amounts] + ([("dense", 0.0)] if dense_baseline else [])
    rounds, traffic, states = [], [], {}
    for technique, amount in progress(runs, desc="fig3 runs"):
        res = simulate(
            train_cfg, cfg, technique, amount, data=data, cache_root=cache_root, threads=threads, device=device
        )
        rounds += res["rounds"]
        traffic += res["traffic"]
        states[(technique, amount)] = res["state"]
    first = ["technique", "amount", "round", "phase", "eligible", "accuracy", "elapsed_s", "mb"]
    df = pd.DataFrame(rounds)
    return SweepResult(df[first + [c for c in df.columns if c not in first]], pd.DataFrame(traffic), states)


def select_for_targets(rounds: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """For each target and technique, the pruning factor reaching it with the least data.

    ``rounds`` needs columns technique, amount, round, accuracy, elapsed_s, mb (and ``eligible``,
    else every row counts). Per factor the first eligible round with accuracy >= target counts;
    among factors the least ``mb`` wins, ties going to less time, then the larger factor. A
    technique that never reaches the target gets ``reached=False`` and NaN numbers."""
    df = rounds if "eligible" in rounds else rounds.assign(eligible=True)
    warm = df[~df["eligible"]].groupby(["technique", "amount"])["mb"].max()  # data sent before pruning
    df = df[df["eligible"]].sort_values(["technique", "amount", "round"])
    out = []
    for target in targets:
        for technique, group in df.groupby("technique", sort=False):
            hits = group[group["accuracy"] >= target - 1e-9].groupby("amount").head(1)
            row = {"target": float(target), "technique": technique, "reached": not hits.empty}
            if hits.empty:
                row |= dict.fromkeys(("amount", "round", "elapsed_s", "mb", "accuracy", "mb_after_warmup"), np.nan)
            else:
                best = hits.assign(neg=-hits["amount"]).sort_values(["mb", "elapsed_s", "neg"]).iloc[0]
                row |= {k: float(best[k]) for k in ("amount", "round", "elapsed_s", "mb", "accuracy")}
                row["mb_after_warmup"] = row["mb"] - float(warm.get((technique, best["amount"]), 0.0))
            out.append(row)
    return pd.DataFrame(out)


def bandwidth_savings(selection: pd.DataFrame, base: str = "magnitude", other: str = "flexrel") -> pd.DataFrame:
    """Per target: data to reach it with ``base`` and ``other``, the saving 1 - other / base, and the
    same saving on the data sent after the (common) dense warm-up only."""
    sel = selection.set_index(["target", "technique"])
    rows = []
    for target in sorted(selection["target"].unique()):
        b = sel.loc[(target, base)] if (target, base) in sel.index else None
        o = sel.loc[(target, other)] if (target, other) in sel.index else None
        mb_b = float(b["mb"]) if b is not None else np.nan
        mb_o = float(o["mb"]) if o is not None else np.nan
        after_b = float(b.get("mb_after_warmup", np.nan)) if b is not None else np.nan
        after_o = float(o.get("mb_after_warmup", np.nan)) if o is not None else np.nan
        rows.append(
            {"target": target, f"mb_{base}": mb_b, f"mb_{other}": mb_o}
            | {f"p_{base}": float(b["amount"]) if b is not None else np.nan}
            | {f"p_{other}": float(o["amount"]) if o is not None else np.nan}
            | {"saving": 1.0 - mb_o / mb_b if np.isfinite(mb_o) and np.isfinite(mb_b) else np.nan}
            | {"saving_after_warmup": 1.0 - after_o / after_b if after_b > 0 and np.isfinite(after_o) else np.nan}
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- half precision
def half_precision_effect(
    result: SweepResult, train_cfg: TrainConfig, data: DataSplits | None = None, device: str = "cpu"
) -> pd.DataFrame:
    """Test accuracy and bytes of each run's final model sent in float32 vs float16 (``half=True``)."""
    data = data if data is not None else data_for(train_cfg)
    rows = []
    for (technique, amount), state in result.states.items():
        model = new_model(train_cfg, data)
        load_state(model, state)
        blob32, blob16 = encode_sparse(model), encode_sparse(model, half=True)
        acc32 = evaluate(model, data.test, device=device)
        acc16 = evaluate(decode_sparse(blob16, copy.deepcopy(model)), data.test, device=device)
        rows.append(
            {"technique": technique, "amount": amount, "accuracy_fp32": acc32, "accuracy_fp16": acc16}
            | {"bytes_fp32": len(blob32), "bytes_fp16": len(blob16), "accuracy_change": acc16 - acc32}
        )
    return pd.DataFrame(rows)


def plot(selection: pd.DataFrame | str | Path, panels: Sequence[str] = PANELS):
    """Elapsed learning time against accuracy target, one panel per technique ((a)
    magnitude, (b) FlexRel, (c) relevance only), each point annotated with the megabytes sent and
    the pruning factor used; the unpruned run, when present, as a grey reference line. Reads the
    table ``select_for_targets`` wrote (a DataFrame or the path of its CSV)."""
    import matplotlib.pyplot as plt

    df = pd.read_csv(selection) if isinstance(selection, (str, Path)) else selection
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    dense = df[(df["technique"] == "dense") & df["reached"]]
    for ax, technique, letter in zip(axes[0], panels, "abcdefgh", strict=False):
        if not dense.empty:
            ax.plot(dense["target"], dense["elapsed_s"], ls="--", color=PALETTE["dense"], lw=1, label=LABELS["dense"])
        part = df[(df["technique"] == technique) & df["reached"]]
        ax.plot(
            part["target"],
            part["elapsed_s"],
            "o-",
            color=PALETTE.get(technique, "C3"),
            label=LABELS[technique],
        )
        for _, r in part.iterrows():
            ax.annotate(f"{r['mb']:.2f} MB\np={r['amount']:.2f}", (r["target"], r["elapsed_s"]), fontsize=6.5,
                        textcoords="offset points", xytext=(0, 6), ha="center")  # fmt: skip
        missed = df[(df["technique"] == technique) & ~df["reached"]]["target"]
        if len(missed):
            ax.text(0.02, 0.97, "not reached: " + ", ".join(f"{t:.2f}" for t in missed), transform=ax.transAxes,
                    fontsize=7, va="top", color="C3")  # fmt: skip
        ax.set_title(f"({letter}) {LABELS[technique]}")
        ax.set_xlabel("accuracy target")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("elapsed learning time (s)")
    fig.tight_layout()
    return fig


def report(
    selection: pd.DataFrame,
    savings: pd.DataFrame,
    half: pd.DataFrame | None,
    cfg: FedConfig,
    amounts: Sequence[float],
    claim: float = 0.35,
) -> str:
    """The fig3 section of REPORT.md: data and time per target and technique, FlexRel's saving over
    magnitude at each target, and a plain verdict on the paper's "over 35 % bandwidth" claim."""
    sel = selection.set_index(["target", "technique"])
    techs = [t for t in ("magnitude", "flexrel", "relevance", "dense") if t in set(selection["technique"])]

    def cell(target: float, t: str) -> str:
        r = sel.loc[(target, t)]
        return "not reached" if not r["reached"] else f"{r['mb']:.2f} MB, {r['elapsed_s']:.1f} s (p={r['amount']:.2f})"

    lines = [
        "## Figure 3 — learning time and transmitted data to reach an accuracy target",
        "",
        f"Scenario: {cfg.nodes} nodes with {cfg.partition} shards of the training split, federated averaging; "
        f"{cfg.warmup_rounds} dense warm-up rounds, pruning of the global model (relevance on "
        f"{cfg.inference_samples} inference samples, FlexRel δ = {cfg.delta}), then {cfg.rounds} rounds with fixed "
        f"masks. Node speed {cfg.node_flops / 1e9:g} GFLOP/s, links {cfg.bandwidth_bps / 1e6:g} Mbit/s, latency "
        f"{1e3 * cfg.latency_s:g} ms. Data = real `encode_sparse` bytes, down and up, all nodes, warm-up included. "
        f"Pruning factors tried: {', '.join(f'{a:g}' for a in amounts)}; a target counts at the first pruned round "
        "reaching it, with the factor that needs the least data.",
        "",
        "| target | " + " | ".join(LABELS[t] for t in techs) + " | FlexRel saving vs magnitude | after warm-up |",
        "|---" * (len(techs) + 3) + "|",
    ]
    for _, s in savings.iterrows():
        saving = pct(s["saving"]) if np.isfinite(s["saving"]) else "—"
        after = s.get("saving_after_warmup", np.nan)
        after = pct(after) if np.isfinite(after) else "—"
        cells = " | ".join(cell(s["target"], t) for t in techs)
        lines.append(f"| {s['target']:.3f} | {cells} | {saving} | {after} |")
    both = savings[np.isfinite(savings["saving"])]
    lines += ["", "**Paper's claim** (“saving over 35 % bandwidth for typical accuracy targets”): "]
    if both.empty:
        verdict = "cannot be checked here: no target was reached by both magnitude and FlexRel."
    else:
        above = int((both["saving"] > claim).sum())
        med = float(both["saving"].median())
        verdict = (
            f"FlexRel saves more than {pct(claim)} at {above} of the {len(both)} targets both techniques reach "
            f"(savings from {pct(both['saving'].min())} to {pct(both['saving'].max())}, median {pct(med)}). "
        )
        after = both["saving_after_warmup"].dropna() if "saving_after_warmup" in both else pd.Series(dtype=float)
        if len(after):
            verdict += (
                f"Counting only the data sent after the dense warm-up (the same for every technique), the saving "
                f"ranges from {pct(after.min())} to {pct(after.max())} (median {pct(float(after.median()))}, "
                f"over {pct(claim)} at {int((after > claim).sum())} of {len(after)} targets). "
            )
        if above == len(both):
            verdict += "**The claim holds here.**"
        elif above == 0:
            verdict += "**The claim does not hold here.**"
        else:
            verdict += f"**The claim holds here only at some targets** (median saving {pct(med)})."
    lines[-1] += verdict
    only = []
    for _, s in savings.iterrows():
        m_ok, f_ok = np.isfinite(s["mb_magnitude"]), np.isfinite(s["mb_flexrel"])
        if m_ok != f_ok:
            who, other = ("FlexRel", "magnitude") if f_ok else ("magnitude", "FlexRel")
            only.append(f"{s['target']:.3f} is reached by {who} only ({other} never gets there at any factor tried)")
        elif not m_ok:
            only.append(f"{s['target']:.3f} is reached by neither")
    if only:
        lines += ["", "Targets without a comparison: " + "; ".join(only) + "."]
    if half is not None and not half.empty:
        ratio = float((half["bytes_fp16"] / half["bytes_fp32"]).mean())
        lines += [
            "",
            f"**Half precision** (float16 values, `encode_sparse(half=True)`) on the final model of every run: "
            f"{pct(ratio)} of the float32 bytes on average; test accuracy changes by "
            f"{half['accuracy_change'].min():+.4f} to {half['accuracy_change'].max():+.4f} "
            f"(mean {half['accuracy_change'].mean():+.4f}).",
        ]
    return "\n".join(lines) + "\n"
