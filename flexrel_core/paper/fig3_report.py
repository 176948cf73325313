"""Figure 3's section of the report: per scenario, how the factors were chosen, the rounds the choices
needed, FlexRel's data saving against each baseline and the verdict on the paper's "saving over 35 %
bandwidth for typical accuracy targets", computed from the intervals.

The verdict is against magnitude pruning (the standard baseline, the strict reading of the claim);
relevance-only pruning and no pruning are reported beside it. Against no pruning, a seed where both
reach the target in the same round saves exactly the ratio of message sizes: the compression of the
pruned model, not something learning earns; the report counts those seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..workbook.config import FedConfig
from ..workbook.report import pct
from ..workbook.stats import direction, format_interval
from .style import LABELS

BASELINES = ("magnitude", "relevance", "dense")
CLAIM = 0.35


def verdict(s: Mapping, claim: float = CLAIM) -> str:
    """ "holds" (interval above ``claim``), "does not hold" (below), or "undetermined" (straddles, < 2 seeds)."""
    if s["n"] < 2 or math.isnan(s["ci_low"]):
        return "undetermined"
    if s["ci_low"] > claim:
        return "holds"
    if s["ci_high"] < claim:
        return "does not hold"
    return "undetermined"


def standard_error(samples: Mapping[int, int] | None, targets: Sequence[float], name: str) -> str:
    """``"750 test images: the standard error of one accuracy near 94% is 0.9 points"`` (at the middle
    target), or ``""`` when sizes are not given."""
    if not samples:
        return ""
    sizes = sorted(set(samples.values()))
    a = float(np.median(targets))
    se = 100 * math.sqrt(a * (1 - a) / min(sizes))
    shown = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    return f"{shown} {name} images: the standard error of one accuracy near {a:.0%} is {se:.1f} points"


def rounds_needed(selection: pd.DataFrame) -> str:
    """How many of the reached selections (all techniques but "dense", all targets and seeds) were
    reached after round 1, 2, ...: ``"round 1: 87, round 2: 3 (of 90; mean 1.03)"``."""
    hit = selection[selection["reached"].astype(bool) & (selection["technique"] != "dense")]
    if hit.empty:
        return "none reached"
    counts = hit["round"].astype(int).value_counts().sort_index()
    parts = ", ".join(f"round {r}: {n}" for r, n in counts.items())
    return f"{parts} (of {len(hit)}; mean {hit['round'].mean():.2f})"


def scenario_section(
    name: str,
    selection: pd.DataFrame,
    saving: pd.DataFrame,
    cfg: FedConfig,
    *,
    start_epochs: int,
    amounts: Sequence[float],
    resolution: float,
    train_samples: int | None = None,
    refined_runs: int = 0,
    refine: Sequence[str] | None = None,
    test_samples: Mapping[int, int] | None = None,
    val_samples: Mapping[int, int] | None = None,
    claim: float = CLAIM,
) -> list[str]:
    """Lines of one scenario's subsection: scenario, protocol, rounds, savings table, verdicts."""
    targets = sorted(selection["target"].unique())
    steps = f"{cfg.local_epochs} epoch(s)"
    steps = f"{cfg.local_steps} mini-batches of {cfg.local_batch_size}" if cfg.local_steps else steps
    hit = selection[selection["reached"].astype(bool)]
    pruned = hit[hit["technique"] != "dense"]
    refined = int((~pruned["amount"].round(6).isin([round(a, 6) for a in amounts])).sum())
    techniques = [t for t in selection["technique"].unique() if t != "dense"]
    grid_only = [t for t in techniques if refine is not None and t not in refine]
    unrefined = f" ({', '.join(LABELS[t] for t in grid_only)}: on the grid only)" if grid_only else ""
    meets = ", ".join(
        f"{LABELS[t]} {int(g['test_meets'].sum())}/{len(g)}" for t, g in hit.groupby("technique", sort=False)
    )
    val_se, test_se = standard_error(val_samples, targets, "validation"), standard_error(test_samples, targets, "test")
    share = f" on {train_samples} images of the training split (drawn at random, stratified by class)"
    evaluation = (
        "validation accuracy every round, test accuracy every round"
        if cfg.test_every_round
        else "validation accuracy every round, test accuracy where a target is first reached on validation"
    )
    stop = "; a run stops once validation meets every target" if cfg.stop_when_reached else ""
    lines = [
        f"### Scenario `{name}`",
        "",
        f"The dense model after {start_epochs} training epoch(s){share if train_samples else ''} (one per seed; "
        f"{selection['seed'].nunique()} seeds) is pruned once at the server with each "
        f"technique, then learnt by {cfg.nodes} nodes holding {cfg.partition} shards of the training split, by "
        f"federated averaging for up to {cfg.rounds} rounds with fixed masks (each node trains {steps} per round; "
        f"{evaluation}{stop}).",
        "",
        f"**Choice of factor.** For each seed, technique and target, the factor is the one reaching the target on the "
        f"validation split ({val_se or 'its own images'}) with the least data, over the grid "
        f"{', '.join(f'{a:g}' for a in amounts)} refined by bisection{unrefined} ({refined_runs} more runs) until the "
        "factor "
        f"chosen is within {resolution:g} of the next factor run above it, which does not reach the target in as few "
        f"rounds (bisection assumes accuracy decreases with p; where it does not, the choice is still the least data "
        f"over every factor run). {refined} of {len(pruned)} choices are refined factors. Data, time and test accuracy "
        f"({test_se or 'test split'}) are reported at the chosen point; the test accuracy there also meets the target "
        f"in {meets} choices.",
        "",
        f"**Rounds the choices needed** (pruned techniques): {rounds_needed(selection)}. {dense_reach(selection)}",
        "",
        "FlexRel's data saving, 1 − MB(FlexRel) / MB(baseline), paired over the seeds where both reach the target "
        "(mean [95 % t-interval], seeds):",
        "",
        *savings_table(saving, targets),
    ]
    return lines + ["", claim_sentence(saving, claim)]


def rounds_to_target(selection: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario,) technique and target, from the choices of ``select_for_targets`` (the columns of
    ``fig3_targets.csv``): the seeds, how many reach the target, and the median and mean round at
    which the chosen factor first reaches it (over the seeds that reach it)."""
    keys = (["scenario"] if "scenario" in selection else []) + ["technique", "target"]
    rows = []
    for key, g in selection.groupby(keys, sort=False):
        hit = g[g["reached"].astype(bool)]
        rows.append(
            dict(zip(keys, key, strict=True)) | {"seeds": int(g["seed"].nunique()), "reached": len(hit)}
            | {"median_round": float(hit["round"].median()) if len(hit) else np.nan}
            | {"mean_round": float(hit["round"].mean()) if len(hit) else np.nan}
        )  # fmt: skip
    return pd.DataFrame(rows)


def dense_reach(selection: pd.DataFrame) -> str:
    """``"No pruning reaches 0.80 in 5 of 5 seeds (median round 1), ..."``: how learning carries the
    unpruned model to each target."""
    dense = selection[selection["technique"] == "dense"]
    if dense.empty:
        return ""
    parts = []
    for r in rounds_to_target(dense).sort_values("target").itertuples():
        where = f", median round {r.median_round:g}" if r.reached else ""
        parts.append(f"{r.target:g} in {r.reached} of {r.seeds} seeds{where}")
    return f"No pruning reaches {'; '.join(parts)}."


def savings_table(saving: pd.DataFrame, targets: Sequence[float]) -> list[str]:
    """The Markdown table of FlexRel's saving per target against each baseline, mean [interval] (n)."""
    lines = ["| target | vs magnitude | vs relevance only | vs no pruning |", "|---|---|---|---|"]
    table = saving.set_index(["target", "baseline"])
    for target in targets:
        cells = []
        for base in BASELINES:
            if (target, base) not in table.index:
                cells.append("—")
                continue
            r = table.loc[(target, base)]
            cells.append(f"{format_interval(r['saving'], r['ci_low'], r['ci_high'], 100, '%', 1)} (n = {int(r['n'])})")
        lines.append(f"| {target:.3f} | " + " | ".join(cells) + " |")
    return lines


def claim_sentence(saving: pd.DataFrame, claim: float = CLAIM) -> str:
    """The verdict on "over 35 % bandwidth" against magnitude, and what the other baselines give."""
    mag = saving[saving["baseline"] == "magnitude"]
    verdicts = [verdict(r, claim) for _, r in mag.iterrows()]
    counts = {v: verdicts.count(v) for v in ("holds", "does not hold", "undetermined")}
    better = [direction(r["ci_low"], r["ci_high"]) for _, r in mag.iterrows()]
    means = mag["saving"].dropna()
    span = f"{100 * means.min():+.1f} to {100 * means.max():+.1f} %" if len(means) else "—"
    text = (
        f"**Paper's claim** (“saving over {pct(claim)} bandwidth for typical accuracy targets”), against magnitude "
        f"pruning: mean saving {span} across targets; the interval lies above {pct(claim)} at {counts['holds']} of "
        f"{len(mag)} targets, below it at {counts['does not hold']}, and straddles it (or too few seeds reach the "
        f"target) at {counts['undetermined']}. FlexRel needs significantly less data than magnitude at "
        f"{better.count('higher')} targets and significantly more at {better.count('lower')}. "
    )
    if counts["holds"] == len(mag) and len(mag):
        text += "**The claim holds here.**"
    elif counts["holds"] == 0 and counts["does not hold"] == len(mag) and len(mag):
        text += "**The claim does not hold here** against magnitude pruning."
    elif counts["holds"] == 0 and counts["does not hold"]:
        text += "**The claim is not supported here** against magnitude pruning: no interval lies above it."
    elif counts["holds"] == 0:
        text += "**Not determined here** against magnitude pruning: every interval straddles it or has too few seeds."
    else:
        text += "**The claim holds here only at some targets.**"
    rel = saving[saving["baseline"] == "relevance"]
    if len(rel):
        above = sum(verdict(r, claim) == "holds" for _, r in rel.iterrows())
        text += (
            f" Against {LABELS['relevance']}, the saving's interval lies above {pct(claim)} at {above} of {len(rel)} "
            "targets."
        )
    dense = saving[saving["baseline"] == "dense"]
    if len(dense):
        same, n = int(dense["same_round"].sum()), int(dense["n"].sum())
        text += (
            f" Against no pruning the saving is {100 * dense['saving'].min():.0f}–{100 * dense['saving'].max():.0f} %, "
            f"but in {same} of {n} (seed, target) pairs both reach the target in the same round, where it is simply "
            "the compression ratio of the pruned model's messages."
        )
    return text


def report(
    selection: pd.DataFrame,
    saving: pd.DataFrame,
    half: pd.DataFrame | None,
    configs: Mapping[str, FedConfig],
    *,
    start_epochs: Mapping[str, int],
    amounts: Mapping[str, Sequence[float]],
    resolution: float | Mapping[str, float],
    delta: float,
    train_samples: Mapping[str, int | None] | None = None,
    refined_runs: Mapping[str, int] | None = None,
    refine: Sequence[str] | None = None,
    test_samples: Mapping[int, int] | None = None,
    val_samples: Mapping[int, int] | None = None,
    claim: float = CLAIM,
) -> str:
    """The Figure 3 section of REPORT.md: the common cost model, one subsection per scenario of
    ``configs`` (``selection`` and ``saving`` carry a ``scenario`` column), the half-precision check
    and a closing note: which scenario is closer to the paper's "elapsed learning time" (the one whose
    choices need more rounds), its savings table with intervals, and the verdict in each.
    ``resolution`` may be given per scenario."""
    cfg = next(iter(configs.values()))
    lines = [
        "## Figure 3 — learning time and transmitted data to reach an accuracy target",
        "",
        f"FlexRel δ = {delta:g}. Node speed {cfg.node_flops / 1e9:g} GFLOP/s, links {cfg.bandwidth_bps / 1e6:g} "
        f"Mbit/s, latency {1e3 * cfg.latency_s:g} ms. Data = real `encode_sparse` bytes, down and up, all nodes; no "
        f"dense warm-up traffic (the starting model was trained centrally). Seeds per scenario: "
        + ", ".join(f"`{n}` {selection.loc[selection['scenario'] == n, 'seed'].nunique()}" for n in configs)
        + ". "
        "Choices per seed in `fig3_targets.csv`, savings in `fig3_savings.csv`, every round in `fig3_rounds.csv` "
        "(`grid` false: a refinement run); `fig3_data_needed.png` shows data needed against p.",
        "",
    ]
    closing = []
    for name, c in configs.items():
        sel = selection[selection["scenario"] == name]
        sav = saving[saving["scenario"] == name]
        res = resolution[name] if isinstance(resolution, Mapping) else resolution
        lines += scenario_section(
            name, sel, sav, c, start_epochs=start_epochs[name], amounts=amounts[name], resolution=res,
            train_samples=(train_samples or {}).get(name), refined_runs=(refined_runs or {}).get(name, 0),
            refine=refine, test_samples=test_samples, val_samples=val_samples, claim=claim,
        ) + [""]  # fmt: skip
        hit = sel[sel["reached"].astype(bool) & (sel["technique"] != "dense")]
        mag = sav[sav["baseline"] == "magnitude"]
        verdicts = [verdict(r, claim) for _, r in mag.iterrows()]
        closing.append((name, float(hit["round"].mean()) if len(hit) else math.nan, verdicts))
    if half is not None and not half.empty:
        ratio = float((half["bytes_fp16"] / half["bytes_fp32"]).mean())
        lines += [
            f"**Half precision** (float16 values, `encode_sparse(half=True)`) on the first seed's final models of "
            f"scenario `{next(iter(configs))}`: {pct(ratio)} of the float32 bytes on average; test accuracy changes by "
            f"{half['accuracy_change'].min():+.4f} to {half['accuracy_change'].max():+.4f}.",
            "",
        ]
    ranked = sorted(closing, key=lambda c: -c[1] if not math.isnan(c[1]) else 0)
    lines.append(
        f"**Closing note.** The paper's axis is elapsed *learning* time: the scenario closer to it is the one where "
        f"reaching a target takes rounds of learning, here `{ranked[0][0]}` (choices reached after {ranked[0][1]:.2f} "
        f"rounds on average, against "
        + ", ".join(f"{r:.2f} in `{n}`" for n, r, _ in ranked[1:])
        + "). Verdict on “over 35 %” against magnitude: "
        + "; ".join(
            f"`{n}`: above at {v.count('holds')}, below at {v.count('does not hold')}, undetermined at "
            f"{v.count('undetermined')} of {len(v)} targets"
            for n, _, v in closing
        )
        + "."
    )
    first = ranked[0][0]
    sel, sav = selection[selection["scenario"] == first], saving[saving["scenario"] == first]
    lines += [
        "",
        f"FlexRel's data saving in `{first}` ({sel['seed'].nunique()} seeds; mean [95 % t-interval], seeds where "
        f"both reach the target). {dense_reach(sel)}",
        "",
        *savings_table(sav, sorted(sel["target"].unique())),
    ]
    return "\n".join(lines) + "\n"
