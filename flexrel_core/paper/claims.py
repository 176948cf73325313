"""Every verdict a run states, read back from the CSVs its notebooks wrote: one row per claim, with
whether it is robust to a rerun (``workbook.stats.robustness``).

A claim is named by a stable string (``"fig2 · reach within 2 points · shifted · one-shot · flexrel −
magnitude"``) so two runs -- another machine, other seeds, an older commit -- can be compared claim by
claim (``compare``). Claims are recomputed from the CSVs with each paper item's own functions
(``fig2.claim_verdict``, ``robustness.verdict``, ``fig4.recommend_delta``), so a folder written
before these columns existed reads the same way. Kinds:

- ``interval``: the direction of one paired difference's 95 % interval against a reference (0, or the
  paper's 35 % for Figure 3's savings against magnitude), robust when it survives a move of half the
  interval's half-width;
- ``aggregate``: a verdict computed from several intervals (Figure 2's claim per condition and
  schedule, a cell of the map), robust when no marginal part can turn it (``stats.robust_aggregate``);
- ``choice``: a value chosen on validation data (Figure 4's δ), robust when every leave-one-seed-out
  subsample chooses the same.

- the paper's four claims (item ``paper``, ``checked``), each read from the claims above.

``python -m flexrel_core.paper.claims --profile default`` writes ``claims.csv``, the report's first
section, "The paper's claims, checked" (``report/checked.md``), and its closing one, "All verdicts"
(``report/claims.md``), from a run's folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..workbook.outputs import save_table, write_report_section
from ..workbook.paths import REPO_ROOT, results_dir
from ..workbook.stats import UNDETERMINED, direction, robustness
from . import checked, fig2, fig4
from . import robustness as map_
from .fig3_report import CLAIM

COLUMNS = ["item", "claim", "kind", "verdict", "robust", "mean", "ci_low", "ci_high", "n", "ref"]


def _interval(item: str, claim: str, mean, low, high, n, ref: float = 0.0) -> dict:
    low, high = float(low), float(high)
    return {
        "item": item, "claim": claim, "kind": "interval", "verdict": direction(low, high, ref),
        "robust": robustness(low, high, ref, n=int(n)), "mean": float(mean), "ci_low": low, "ci_high": high,
        "n": int(n), "ref": ref,
    }  # fmt: skip


def fig2_claims(folder: Path) -> list[dict]:
    """Reach gains (each threshold, FlexRel and relevance against magnitude), the verdict on the claim
    per condition and schedule, and FlexRel − magnitude in accuracy at every pruning factor but 0."""
    rows = []
    summary = pd.read_csv(folder / "fig2_summary.csv")
    for r in summary.to_dict("records"):
        where = f"{r['condition']} · {r['schedule']}"
        for other in fig2.COMPARED:
            if f"gain_{other}" in r and not np.isnan(r[f"gain_{other}_ci_low"]):
                rows.append(
                    _interval(
                        "fig2",
                        f"fig2 · reach within {r['threshold_points']:g} points · {where} · {other} − magnitude",
                        r[f"gain_{other}"],
                        r[f"gain_{other}_ci_low"],
                        r[f"gain_{other}_ci_high"],
                        r.get(f"pairs_{other}", r["n_seeds"]),
                    )  # fmt: skip
                )
    for (condition, schedule), g in summary.groupby(["condition", "schedule"], sort=False):
        directions = [
            direction(lo, hi) for lo, hi in zip(g["gain_flexrel_ci_low"], g["gain_flexrel_ci_high"], strict=True)
        ]
        verdict = fig2.claim_verdict(directions)[0]
        rows.append({"item": "fig2", "claim": f"fig2 · the claim · {condition} · {schedule}", "kind": "aggregate"}
                    | {"verdict": verdict, "robust": fig2.claim_robustness(g)})  # fmt: skip
    diff = pd.read_csv(folder / "fig2_differences.csv")
    diff = diff[(diff["comparison"] == "flexrel - magnitude") & (diff["p"] > 0)]
    for r in diff.to_dict("records"):
        claim = f"fig2 · accuracy at p = {r['p']:g} · {r['condition']} · {r['schedule']} · flexrel − magnitude"
        rows.append(_interval("fig2", claim, r["mean"], r["ci_low"], r["ci_high"], r["n"]))
    return rows


def fig3_claims(folder: Path) -> list[dict]:
    """FlexRel's data saving against each baseline per scenario and target (above 0), and against
    magnitude above the paper's 35 %."""
    rows = []
    for r in pd.read_csv(folder / "fig3_savings.csv").to_dict("records"):
        if r["n"] < 2 or np.isnan(r["ci_low"]):
            continue
        where = f"fig3 · {r.get('scenario', 'trained')} · target {r['target']:g} · saving vs {r['baseline']}"
        rows.append(_interval("fig3", where, r["saving"], r["ci_low"], r["ci_high"], r["n"]))
        if r["baseline"] == "magnitude":
            against = f"{where} against {CLAIM:.0%}"
            rows.append(_interval("fig3", against, r["saving"], r["ci_low"], r["ci_high"], r["n"], ref=CLAIM))
    return rows


def fig4_claims(folder: Path) -> list[dict]:
    """The δ recommended per schedule (a choice) and its paired test gain over magnitude."""
    df = pd.read_csv(folder / "fig4_delta.csv")
    rows = []
    for schedule in dict.fromkeys(df["schedule"]):
        rec = fig4.recommend_delta(df, schedule)
        rows.append(
            {"item": "fig4", "claim": f"fig4 · recommended δ · {schedule}", "kind": "choice"}
            | {"verdict": f"δ = {rec['delta']:g}", "robust": rec["robust"], "mean": rec["delta"]}
        )
        g = rec["test_gain_over_magnitude"]
        claim = f"fig4 · recommended δ − magnitude, test accuracy · {schedule}"
        rows.append(_interval("fig4", claim, g["mean"], g["ci_low"], g["ci_high"], g["n"]))
    return rows


def ablation_claims(folder: Path) -> list[dict]:
    """Every comparison of the ablations at every pruning factor and schedule."""
    rows = []
    for r in pd.read_csv(folder / "ablations_differences.csv").to_dict("records"):
        claim = f"ablations · {r['comparison']} · {r['schedule']} · p = {r['p']:g}"
        rows.append(_interval("ablations", claim, r["mean"], r["ci_low"], r["ci_high"], r["n"]))
    return rows


def map_claims(folder: Path) -> list[dict]:
    """Each map cell's verdict (reach and knee accuracies together), its reach gain, and FlexRel −
    magnitude in accuracy at each knee factor."""
    cells = pd.read_csv(folder / "robustness_map.csv")
    effects = pd.read_csv(folder / "robustness_accuracy_effects.csv")
    keys = ["setting", "schedule", "condition"]
    rows = []
    for r in cells.to_dict("records"):
        where = " · ".join(str(r[k]) for k in keys)
        knee = effects[(effects[keys] == pd.Series({k: r[k] for k in keys})).all(axis=1)]
        knees = list(zip(knee["ci_low"], knee["ci_high"], knee["n_seeds"], strict=True))
        verdict = map_.verdict(direction(r["ci_low"], r["ci_high"]), [direction(k[0], k[1]) for k in knees])
        robust = map_.cell_robustness((r["ci_low"], r["ci_high"], r.get("pairs", r["n_seeds"])), knees)
        cell = {"item": "map", "claim": f"map · {where}", "kind": "aggregate"}
        rows.append(cell | {"verdict": verdict, "robust": robust})
        if not np.isnan(r["ci_low"]):
            n = r.get("pairs", r["n_seeds"])
            rows.append(_interval("map", f"map · reach · {where}", r["gain"], r["ci_low"], r["ci_high"], n))
    for r in effects.to_dict("records"):
        where = " · ".join(str(r[k]) for k in keys)
        rows.append(
            _interval("map", f"map · accuracy at p = {r['p']:g} · {where}", r["mean"], r["ci_low"], r["ci_high"],
                      r["n_seeds"])
        )  # fmt: skip
    return rows


def baseline_claims(folder: Path) -> list[dict]:
    """FlexRel against each data-aware baseline: the verdict per setting, schedule and condition (reach
    and knee accuracies together, as written by the baselines notebook), its reach gain, and FlexRel −
    baseline in accuracy at every pruning factor but 0."""
    rows = []
    for r in pd.read_csv(folder / "baselines_verdicts.csv").to_dict("records"):
        where = f"{r['setting']} · {r['schedule']} · {r['condition']} · flexrel − {r['baseline']}"
        rows.append({"item": "baselines", "claim": f"baselines · {where}", "kind": "aggregate"}
                    | {"verdict": r["verdict"], "robust": r["robust"]})  # fmt: skip
        if not np.isnan(r["ci_low"]):
            n = r.get("pairs", r["n_seeds"])
            claim = f"baselines · reach · {where}"
            rows.append(_interval("baselines", claim, r["gain"], r["ci_low"], r["ci_high"], n))
    for r in pd.read_csv(folder / "baselines_differences.csv").to_dict("records"):
        if r["p"] == 0 or np.isnan(r["ci_low"]):
            continue
        where = f"{r['setting']} · {r['schedule']} · {r['condition']} · flexrel − {r['baseline']}"
        claim = f"baselines · accuracy at p = {r['p']:g} · {where}"
        rows.append(_interval("baselines", claim, r["mean"], r["ci_low"], r["ci_high"], r["n"]))
    return rows


# Each paper item's claims and the CSV it needs; an item whose CSV is missing states no claim.
READERS: dict[str, tuple[str, Callable[[Path], list[dict]]]] = {
    "fig2": ("fig2_summary.csv", fig2_claims),
    "baselines": ("baselines_verdicts.csv", baseline_claims),
    "fig3": ("fig3_savings.csv", fig3_claims),
    "fig4": ("fig4_delta.csv", fig4_claims),
    "ablations": ("ablations_differences.csv", ablation_claims),
    "map": ("robustness_map.csv", map_claims),
}


def claims(folder: str | Path) -> pd.DataFrame:
    """Every claim the run in ``folder`` (a ``results/<profile>/``) states; columns ``COLUMNS``."""
    folder = Path(folder)
    rows = [row for csv, read in READERS.values() if (folder / csv).exists() for row in read(folder)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([table, pd.DataFrame(checked.rows(folder, table), columns=COLUMNS)], ignore_index=True)


def shown(r) -> str:
    """A claim's verdict as the report's headline table writes it (against 35 %: above / below)."""
    if r.kind == "interval" and r.ref:
        return {"higher": f"above {r.ref:.0%}", "lower": f"below {r.ref:.0%}"}.get(r.verdict, f"straddles {r.ref:.0%}")
    return r.verdict


def at_a_glance(table: pd.DataFrame) -> str:
    """The report's closing section: how many verdicts are robust per paper item, the rule, and the
    headline claims (Figure 2's claim per condition and schedule, Figure 3 against 35 %, Figure 4's δ,
    every cell of the map, FlexRel against each data-aware baseline)."""
    robust = table[table["robust"] == "robust"]
    per_item = ", ".join(
        f"{item} {int((g['robust'] == 'robust').sum())} of {len(g)}" for item, g in table.groupby("item", sort=False)
    )
    lines = [
        "## All verdicts, and when a verdict is robust",
        "",
        f"{len(table)} verdicts in this report, **{len(robust)} robust** ({per_item}). A difference is *robust* when "
        "its 95 % interval clears its reference (0, or 35 % for Figure 3's saving against magnitude) by at least its "
        "own half-width, on at least 5 paired seeds: moved by a half-width either way, it would still exclude the "
        "reference. “No detectable difference” is never robust: a rerun finds a difference one time in twenty even "
        "between equivalent methods. A verdict built from several intervals (Figure 2's claim, a cell of the map) is "
        "robust when no direction its marginal parts can take turns it; Figure 4's δ, chosen on validation data, when "
        "every leave-one-seed-out subsample chooses the same. A rerun on another CPU can move some numbers (see the "
        "section below: what float64 training keeps and what it does not): marginal verdicts are the ones it "
        "can turn, marked *(marginal)* wherever they appear. Every verdict is in `claims.csv`; "
        "`make compare REF=<git ref or folder>` compares two runs claim by claim. " + UNDETERMINED,
        "",
        "| claim | verdict | robust |",
        "|---|---|---|",
    ]
    headline = table[
        table["claim"].str.startswith("fig2 · the claim")
        | table["claim"].str.startswith("fig4 · recommended δ ·")
        | (table["item"].eq("fig3") & table["ref"].fillna(0).ne(0))
        | (table["kind"].eq("aggregate") & table["item"].isin(["map", "baselines"]))
    ]
    for r in headline.itertuples():
        lines.append(f"| {r.claim} | {shown(r)} | {r.robust} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write claims.csv and the report's 'Verdicts at a glance'.")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--results-root", default=str(REPO_ROOT / "results"))
    args = parser.parse_args(argv)
    folder = results_dir(args.profile, args.results_root)
    table = claims(folder)
    save_table(table, folder, "claims")
    write_report_section(folder, "checked", checked.section(folder, table))
    write_report_section(folder, "claims", at_a_glance(table))
    print(f"{len(table)} claims ({int((table['robust'] == 'robust').sum())} robust) -> {folder / 'claims.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
