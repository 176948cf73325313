"""The paper's four claims, checked: one row each, read from the run's other claims, heading REPORT.md.

The paper (Chiasserini et al., abstract and summary) claims that FlexRel (1) reaches higher pruning
factors at the same accuracy, (2) saves over 35 % bandwidth at typical accuracy targets, (3) comes with
guidance on choosing δ, and (4) does so at a modest overhead. Each row names the measured counterpart in
this workbook, its headline number with its 95 % interval, a verdict and whether a rerun can turn it,
and the figure that shows it:

1. Figure 2's claim per condition (in-distribution, shifted) and schedule (one-shot, fine-tuned); the
   headline is the reach gain within 2 points of dense accuracy, FlexRel − global magnitude pruning.
   Robust only when all four parts are.
2. Figure 3's saving of transmitted data against magnitude, per scenario and target, against 35 %:
   ``holds`` when every interval lies above 35 %, ``not supported`` when none does, else ``holds at k of n
   targets``; robust when no direction a marginal part can take changes that (``stats.robust_aggregate``).
3. Figure 4's δ chosen on validation data per schedule, beside what the paper says of δ (no value: its
   summary speaks of a tunable δ with guidance, its Figure 4 of the effect of δ for several pruning
   factors). ``holds`` when, in every schedule, the chosen δ lies strictly between 0 and 1 and its paired
   test gain over δ = 0 lies above 0; robust when every choice and gain is.
4. Table 1's FlexRel scoring time against one training epoch of the same model (``table1.overhead``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..workbook.stats import format_interval, robust_aggregate
from . import table1
from .fig3_report import CLAIM

PERCENT = f"{100 * CLAIM:.0f} %"
PAPER_SAYS_DELTA = (
    "a tunable δ balances the two signals, with guidance on choosing it (summary); Figure 4: “effect of the "
    "weighting factor δ over the achieved accuracy, for different pruning factors”; no value of δ is given"
)


def _row(claim: str, verdict: str, robust: str, mean=np.nan, low=np.nan, high=np.nan, n=np.nan) -> dict:
    return {"item": "paper", "claim": f"paper · {claim}", "kind": "aggregate", "verdict": verdict,
            "robust": robust, "mean": mean, "ci_low": low, "ci_high": high, "n": n, "ref": 0.0}  # fmt: skip


def _get(table: pd.DataFrame, claim: str) -> pd.Series | None:
    hit = table[table["claim"] == claim]
    return None if hit.empty else hit.iloc[0]


def _all_robust(parts: list[pd.Series]) -> str:
    return "robust" if parts and all(p["robust"] == "robust" for p in parts) else "marginal"


def pruning_factors(table: pd.DataFrame) -> tuple[dict, str] | None:
    """Claim 1: the row, and its headline number as the report writes it."""
    parts = {
        (c, s): _get(table, f"fig2 · the claim · {c} · {s}")
        for s in ("one-shot", "fine-tuned")
        for c in ("in-distribution", "shifted")
    }
    parts = {k: v for k, v in parts.items() if v is not None}
    if not parts:
        return None
    verdict = "; ".join(f"{s} {c}: {v['verdict']}" for (c, s), v in parts.items())
    head = _get(table, "fig2 · reach within 2 points · in-distribution · one-shot · flexrel − magnitude")
    numbers = []
    for s in ("one-shot", "fine-tuned"):
        r = _get(table, f"fig2 · reach within 2 points · in-distribution · {s} · flexrel − magnitude")
        if r is not None:
            numbers.append(f"{s} {format_interval(r['mean'], r['ci_low'], r['ci_high'], digits=3)}")
    row = _row("higher pruning factors at the same accuracy", verdict, _all_robust(list(parts.values())))
    if head is not None:
        row |= {k: head[k] for k in ("mean", "ci_low", "ci_high", "n")}
    return row, "; ".join(numbers)


def bandwidth(table: pd.DataFrame) -> tuple[dict, str] | None:
    """Claim 2: FlexRel's data saving against magnitude, above 35 % at every target?"""
    parts = table[(table["item"] == "fig3") & (table["ref"] == CLAIM)]
    if parts.empty:
        return None

    def verdict(directions) -> str:
        above = sum(d == "higher" for d in directions)
        if above == len(directions):
            return "holds"
        return "not supported" if above == 0 else f"holds at {above} of {len(directions)} targets"

    said = verdict(list(parts["verdict"]))
    below = int((parts["verdict"] == "lower").sum())
    detail = f"{said}: above {PERCENT} at {int((parts['verdict'] == 'higher').sum())} of {len(parts)} targets"
    detail += f", below at {below}" if below else ""
    intervals = list(zip(parts["ci_low"], parts["ci_high"], parts["n"], strict=True))
    best = parts.loc[parts["mean"].idxmax()]
    where = best["claim"].split(" · ")
    row = _row(f"over {PERCENT} bandwidth saved", detail, robust_aggregate(verdict, intervals, ref=CLAIM))
    row |= {k: best[k] for k in ("mean", "ci_low", "ci_high", "n")} | {"ref": CLAIM}
    lo, hi = parts["mean"].min(), parts["mean"].max()
    number = (
        f"{100 * lo:+.1f} to {100 * hi:+.1f} % over {len(parts)} targets; largest "
        f"{format_interval(best['mean'], best['ci_low'], best['ci_high'], 100, '%', 1)} ({where[1]}, {where[2]})"
    )
    return row, number


def delta_guidance(table: pd.DataFrame) -> tuple[dict, str] | None:
    """Claim 3: the δ chosen on validation data per schedule and its test gain over δ = 0."""
    choices = table[table["claim"].str.startswith("fig4 · recommended δ · ")]
    if choices.empty:
        return None
    parts, numbers, holds = [], [], True
    for c in choices.itertuples():
        schedule = c.claim.rsplit(" · ", 1)[1]
        gain = _get(table, f"fig4 · recommended δ − magnitude, test accuracy · {schedule}")
        parts += [pd.Series(c._asdict())] + ([gain] if gain is not None else [])
        holds &= 0 < c.mean < 1 and gain is not None and gain["verdict"] == "higher"
        if gain is not None:
            number = format_interval(gain["mean"], gain["ci_low"], gain["ci_high"], 100, "points", 1)
            numbers.append(f"{schedule} δ = {c.mean:g} ({number} over δ = 0)")
    verdict = "holds: a δ strictly between 0 and 1, chosen on validation data, beats δ = 0 in every schedule"
    if not holds:
        verdict = "not supported: in some schedule the chosen δ is 0 or 1, or does not beat δ = 0 on test data"
    return _row("guidance on choosing δ", verdict, _all_robust(parts)), "; ".join(numbers)


def overhead(folder: Path) -> tuple[dict, str] | None:
    """Claim 4: FlexRel's scoring time against one training epoch (Table 1)."""
    path = folder / "table1_costs.csv"
    o = table1.overhead(pd.read_csv(path)) if path.exists() else None
    if o is None:
        return None
    row = _row("modest overhead", f"{o['verdict']}: {o['ratio']:.3g}× one training epoch", o["robust"])
    row |= {"mean": o["ratio"], "ci_low": o["low"], "ci_high": o["high"], "n": o["n"]}
    number = f"{o['ratio']:.3g}× (range over {o['n']} rounds {o['low']:.3g}–{o['high']:.3g})"
    return row, number


# Each claim: its counterpart in the workbook, its figure, and how the row is computed.
CLAIMS = (
    ("Figure 2: pruning factor reached within 2 points of dense accuracy, FlexRel − global magnitude pruning, "
     "in-distribution (the verdict covers the shifted condition too)", "fig2_accuracy.png", pruning_factors),
    (f"Figure 3: data transmitted to reach each accuracy target, FlexRel's saving against magnitude, against "
     f"{PERCENT}", "fig3.png", bandwidth),
    ("Figure 4: the δ chosen on validation data, paired test-accuracy gain over δ = 0 (magnitude)",
     "fig4_delta.png", delta_guidance),
    ("Table 1: FlexRel scoring time (LRP pass included) over one float32 training epoch of the same model",
     "table1_costs.png", None),
)  # fmt: skip


def checked(folder: str | Path, table: pd.DataFrame) -> list[tuple[str, str, tuple[dict, str] | None]]:
    """Per claim: its counterpart, its figure and ``(claims.csv row, headline number)`` (None: not measured)."""
    folder = Path(folder)
    out = []
    for counterpart, figure, compute in CLAIMS:
        result = overhead(folder) if compute is None else compute(table)
        out.append((counterpart, figure, result))
    return out


def rows(folder: str | Path, table: pd.DataFrame) -> list[dict]:
    """The four claims' rows for ``claims.csv`` (those measured)."""
    return [r[0] for *_, r in checked(folder, table) if r is not None]


def section(folder: str | Path, table: pd.DataFrame, link_prefix: str = "") -> str:
    """The report's first section: the paper's four claims, each with its measured counterpart, headline
    number, verdict (*(marginal)* where a rerun can turn it) and figure; ``link_prefix`` is put before
    each figure's file name (the README links into ``results/default/``)."""
    lines = [
        "## The paper's claims, checked",
        "",
        "| the paper claims | measured here | headline (95 % interval) | verdict | robust | figure |",
        "|---|---|---|---|---|---|",
    ]
    said = ("higher pruning factors at the same accuracy", f"over {PERCENT} bandwidth saved at typical accuracy "
            "targets", f"guidance on choosing δ ({PAPER_SAYS_DELTA})", "modest overhead")  # fmt: skip
    for claim, (counterpart, figure, result) in zip(said, checked(folder, table), strict=True):
        if result is None:
            lines.append(f"| {claim} | {counterpart} | not measured in this run | — | — | — |")
            continue
        row, number = result
        lines.append(
            f"| {claim} | {counterpart} | {number} | {row['verdict']} | {row['robust']} | "
            f"[{figure}]({link_prefix}{figure}) |"
        )
    lines += [
        "",
        "A verdict is *robust* when a rerun cannot turn it (its intervals clear their reference by at least their "
        "half-width; the rule is in “All verdicts” at the end), *marginal* otherwise. Every row is a claim in "
        "`claims.csv` (item `paper`); the sections below give every number behind it.",
    ]
    return "\n".join(lines) + "\n"
