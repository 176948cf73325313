"""The paper's four claims, checked (``paper.checked``): each row's verdict and robustness on hand-made
claims, by the rules its docstring states, and the section that heads REPORT.md."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flexrel_core.paper import checked, claims


def _interval(claim: str, mean: float, low: float, high: float, n: int = 10, ref: float = 0.0) -> dict:
    from flexrel_core.workbook.stats import direction, robustness

    return {"item": claim.split(" · ")[0], "claim": claim, "kind": "interval", "verdict": direction(low, high, ref),
            "robust": robustness(low, high, ref, n), "mean": mean, "ci_low": low, "ci_high": high, "n": n,
            "ref": ref}  # fmt: skip


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=claims.COLUMNS)


def test_bandwidth_holds_only_where_every_target_clears_35_percent():
    name = "fig3 · trained · target {} · saving vs magnitude against 35%"
    below = [
        _interval(name.format(0.9), 0.15, 0.05, 0.25, ref=0.35),
        _interval(name.format(0.95), 0.2, 0.1, 0.3, ref=0.35),
    ]
    row, number = checked.bandwidth(_table(below))
    assert row["verdict"].startswith("not supported: above 35 % at 0 of 2 targets, below at 2")
    assert row["robust"] == "robust"  # a marginal "below" may straddle 35 % on a rerun: still not supported
    assert row["mean"] == 0.2 and "+15.0 to +20.0 %" in number and "target 0.95" in number
    straddles_above = below + [_interval(name.format(0.97), 0.4, 0.2, 0.6, ref=0.35)]  # its mean is above 35 %
    row, _ = checked.bandwidth(_table(straddles_above))
    assert row["verdict"].startswith("not supported") and row["robust"] == "marginal"  # a rerun may find it above
    mixed = below + [_interval(name.format(0.97), 0.6, 0.5, 0.7, ref=0.35)]
    assert checked.bandwidth(_table(mixed))[0]["verdict"].startswith("holds at 1 of 3 targets")
    assert checked.bandwidth(_table([])) is None


def _fig2(verdicts: dict[tuple[str, str], tuple[str, str]]) -> list[dict]:
    rows = []
    for (condition, schedule), (verdict, robust) in verdicts.items():
        rows.append({"item": "fig2", "claim": f"fig2 · the claim · {condition} · {schedule}", "kind": "aggregate",
                     "verdict": verdict, "robust": robust})  # fmt: skip
    reach = "fig2 · reach within 2 points · in-distribution · {} · flexrel − magnitude"
    return rows + [
        _interval(reach.format("one-shot"), 0.02, 0.01, 0.03),
        _interval(reach.format("fine-tuned"), 0, -1, 1),
    ]


def test_higher_pruning_factors_is_robust_only_when_every_condition_is():
    parts = {(c, s): ("holds", "robust") for c in ("in-distribution", "shifted") for s in ("one-shot", "fine-tuned")}
    row, number = checked.pruning_factors(_table(_fig2(parts)))
    assert row["robust"] == "robust" and row["verdict"].count("holds") == 4
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (0.02, 0.01, 0.03)
    assert number == "one-shot +0.020 [+0.010, +0.030]; fine-tuned +0.000 [-1.000, +1.000]"
    parts[("shifted", "fine-tuned")] = ("holds partly", "marginal")
    row, _ = checked.pruning_factors(_table(_fig2(parts)))
    assert row["robust"] == "marginal" and "fine-tuned shifted: holds partly" in row["verdict"]


def test_delta_guidance_needs_an_interior_delta_that_beats_magnitude_in_every_schedule():
    def rows(delta_ft: float, gain_low: float) -> list[dict]:
        out = []
        for schedule, delta, low in (("one-shot", 0.5, 0.01), ("fine-tuned", delta_ft, gain_low)):
            out.append({"item": "fig4", "claim": f"fig4 · recommended δ · {schedule}", "kind": "choice",
                        "verdict": f"δ = {delta:g}", "robust": "robust", "mean": delta})  # fmt: skip
            out.append(_interval(f"fig4 · recommended δ − magnitude, test accuracy · {schedule}", low + 0.02, low,
                                 low + 0.04))  # fmt: skip
        return out

    row, number = checked.delta_guidance(_table(rows(0.25, 0.01)))
    assert row["verdict"].startswith("holds") and row["robust"] == "marginal"  # gains clear 0 by less than 0.02
    assert "one-shot δ = 0.5 (+3.0 [+1.0, +5.0] points over δ = 0)" in number
    assert checked.delta_guidance(_table(rows(1.0, 0.01)))[0]["verdict"].startswith("not supported")  # δ = 1
    assert checked.delta_guidance(_table(rows(0.25, -0.03)))[0]["verdict"].startswith("not supported")  # no gain


def test_overhead_reads_table_1s_rounds(tmp_path):
    costs = pd.DataFrame(
        {"method": ["magnitude", "flexrel"], "score_round_times_s": ["0.001 0.001 0.001", "0.2 0.3 0.4"],
         "epoch_round_times_s": ["1.0 1.0 0.5"] * 2, "epoch_time_s": [1.0, 1.0], "train_samples": [3000, 3000]}
    )  # fmt: skip
    costs.to_csv(tmp_path / "table1_costs.csv", index=False)
    row, number = checked.overhead(tmp_path)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (0.3, 0.2, 0.8)  # per round: 0.2, 0.3, 0.8
    assert row["verdict"] == "modest: 0.3× one training epoch" and row["robust"] == "robust"
    assert number == "0.3× (range over 3 rounds 0.2–0.8)"
    assert checked.overhead(tmp_path / "nothing") is None


def test_the_section_has_a_row_per_claim_and_says_what_was_not_measured(tmp_path):
    name = "fig3 · trained · target 0.9 · saving vs magnitude against 35%"
    table = _table([_interval(name, 0.15, 0.05, 0.25, ref=0.35)])
    text = checked.section(tmp_path, table, link_prefix="results/default/")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4 and "not measured in this run" in rows[0] and "not measured in this run" in rows[3]
    assert "[fig3.png](results/default/fig3.png)" in rows[1] and "no value of δ is given" in rows[2]
    assert [r["claim"] for r in checked.rows(tmp_path, table)] == ["paper · over 35 % bandwidth saved"]
    assert np.isclose(checked.rows(tmp_path, table)[0]["ref"], 0.35)
