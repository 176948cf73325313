"""Figure 3: the choice of pruning factor per seed and target on a hand-made table, paired savings with
their intervals, report and figures, and the notebook under the quick profile (the files it writes,
their columns and value ranges)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from quick_outputs import QUICK

from flexrel_core.paper import fig3
from flexrel_core.workbook.config import FedConfig

# (technique, amount): accuracy after each round of learning; data per round = 1 - amount (MB); seed 1 is
# seed 0 with every accuracy 0.01 lower, and the unpruned run ("dense") sends 1 MB per round.
CURVES = {
    ("magnitude", 0.5): [0.70, 0.85, 0.90],
    ("magnitude", 0.9): [0.60, 0.80, 0.84],
    ("flexrel", 0.5): [0.70, 0.86, 0.91],
    ("flexrel", 0.9): [0.70, 0.85, 0.92],
    ("relevance", 0.5): [0.50, 0.60, 0.70],
    ("dense", 0.0): [0.95, 0.96, 0.97],
}


def hand_table(seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for (t, a), accs in CURVES.items():
            rows.append({"seed": seed, "technique": t, "amount": a, "round": 0, "accuracy": 0.99, "elapsed_s": 0.0})
            rows[-1] |= {"mb": 0.0, "eligible": False}
            for r, acc in enumerate(accs, start=1):
                rows.append(
                    {"seed": seed, "technique": t, "amount": a, "round": r, "accuracy": acc - 0.01 * seed}
                    | {"elapsed_s": 10.0 * r, "mb": r * (1 - a), "eligible": True}
                )
    return pd.DataFrame(rows)


def test_target_selection_per_seed_on_a_hand_made_table():
    sel = fig3.select_for_targets(hand_table(), [0.8, 0.85, 0.9, 0.95]).set_index(["target", "seed", "technique"])
    # seed 0, magnitude: 0.9 reaches 0.80 at round 2 (0.2 MB) < 0.5 at round 2 (1.0 MB)
    assert sel.loc[(0.8, 0, "magnitude"), ["amount", "round", "mb"]].tolist() == pytest.approx([0.9, 2, 0.2])
    # seed 1 is 0.01 lower: 0.9 reaches 0.80 only at round 3 (0.3 MB), still less than 0.5 at round 2 (1.0 MB)
    assert sel.loc[(0.8, 1, "magnitude"), ["amount", "round", "mb"]].tolist() == pytest.approx([0.9, 3, 0.3])
    assert sel.loc[(0.85, 0, "flexrel"), ["amount", "mb"]].tolist() == pytest.approx([0.9, 0.2])
    assert sel.loc[(0.9, 0, "flexrel"), ["amount", "round"]].tolist() == [0.9, 3]
    assert not sel.loc[(0.95, 0, "magnitude"), "reached"] and math.isnan(sel.loc[(0.95, 0, "magnitude"), "mb"])
    assert not sel.loc[(0.8, 0, "relevance"), "reached"]  # the ineligible round 0 does not count


def test_savings_are_paired_over_the_seeds_where_both_reach():
    sel = fig3.select_for_targets(hand_table(), [0.8, 0.85, 0.9, 0.95])
    sav = fig3.savings(sel).set_index(["target", "baseline"])
    # 0.85: seed 0 FlexRel 0.9 at round 2 (0.2 MB) vs magnitude 0.5 at round 2 (1.0 MB): saving 0.8;
    # seed 1 FlexRel 0.9 at round 3 (0.3 MB) vs magnitude 0.5 at round 3 (1.5 MB): saving 0.8
    row = sav.loc[(0.85, "magnitude")]
    assert row["saving"] == pytest.approx(0.8) and row["n"] == 2
    assert row["ci_low"] == pytest.approx(0.8) and row["ci_high"] == pytest.approx(0.8)  # identical seeds
    # 0.8: seed 0 saving 1 - 0.2/0.2 = 0; seed 1 FlexRel 0.9 at round 2 (0.2 MB) vs magnitude 0.3 MB: 1/3
    row = sav.loc[(0.8, "magnitude")]
    assert row["saving"] == pytest.approx(1 / 6) and row["ci_low"] < 0 < row["ci_high"]
    # against no pruning (1 MB per round, the target at round 1): 0.85 -> 1 - 0.2/1 and 1 - 0.3/1
    assert sav.loc[(0.85, "dense"), "saving"] == pytest.approx((0.8 + 0.7) / 2)
    assert sav.loc[(0.95, "magnitude"), "n"] == 0 and math.isnan(sav.loc[(0.95, "magnitude"), "saving"])
    assert sav.loc[(0.95, "magnitude"), "reached_magnitude"] == 0


def test_report_states_the_verdict_against_magnitude_and_the_other_baselines():
    sel = fig3.select_for_targets(hand_table(), [0.8, 0.85, 0.9, 0.95])
    text = fig3.report(sel, fig3.savings(sel), None, FedConfig(), amounts=[0.5, 0.9], delta=0.5)
    assert "## Figure 3" in text and "Paper's claim" in text
    assert "+80.0 [+80.0, +80.0] % (n = 2)" in text  # target 0.85 against magnitude
    assert "above 35.0 % at 2 of 4 targets" in text and "only at some targets" in text
    assert "Against relevance only" in text and "Against dense (no pruning)" in text
    assert len(fig3.plot(sel).axes) == 3
    assert len(fig3.plot_curves(fig3.curves(hand_table())).axes) == 2
    assert "images" not in text  # no evaluation-set size given, none stated
    sized = fig3.report(
        sel, fig3.savings(sel), None, FedConfig(), amounts=[0.5], delta=0.5, test_samples={0: 400, 1: 400}
    )
    # middle target 0.875: sqrt(0.875 * 0.125 / 400) = 0.0165
    assert "(400 images: the standard error of one accuracy near 88% is 1.7 points)" in sized


def test_curves_average_over_seeds_with_an_interval():
    c = fig3.curves(hand_table()).set_index(["technique", "amount", "round"])
    row = c.loc[("flexrel", 0.9, 2)]
    assert row["accuracy"] == pytest.approx(0.845) and row["n"] == 2 and row["mb"] == pytest.approx(0.2)
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]


@pytest.fixture(scope="module")
def fig3_out(run_quick):
    return run_quick("fig3")


@pytest.mark.notebook
def test_notebook_rounds_csv(fig3_out):
    params, seeds = QUICK["fig3"], QUICK["common"]["seeds"]
    df = pd.read_csv(fig3_out / "fig3_rounds.csv")
    expected = {"seed", "technique", "amount", "round", "eligible", "accuracy", "elapsed_s", "mb"}
    expected |= {"flops_per_sample", "bytes_down", "bytes_up", "compute_s", "transfer_s", "round_s"}
    assert expected <= set(df.columns)
    assert set(df["technique"]) == {"magnitude", "flexrel", "relevance", "dense"} and set(df["seed"]) == set(seeds)
    runs = len(seeds) * (len(params["techniques"]) * len(params["amounts"]) + 1)
    assert len(df) == runs * (params["rounds"] + 1)  # per-seed rows for every technique, round 0 included
    assert df["accuracy"].between(0, 1).all() and (df[["bytes_down", "bytes_up", "round_s"]] >= 0).all().all()
    assert np.allclose(df["round_s"], df["compute_s"] + df["transfer_s"])
    dense = df[(df["technique"] == "dense") & (df["round"] == 1)].set_index("seed")["bytes_down"]
    for (seed, technique, amount), run in df.groupby(["seed", "technique", "amount"]):
        assert run["elapsed_s"].is_monotonic_increasing and run["mb"].is_monotonic_increasing
        if technique != "dense":  # a pruned model travels in fewer bytes than the dense one, roughly by 1 - p
            ratio = run.loc[run["round"] == 1, "bytes_down"].iloc[0] / dense[seed]
            assert ratio < 1 - amount + 0.1, (seed, technique, amount, ratio)


@pytest.mark.notebook
def test_notebook_traffic_csv(fig3_out):
    df = pd.read_csv(fig3_out / "fig3_traffic.csv")
    columns = {"seed", "technique", "amount", "round", "node", "samples", "bytes_sent", "bytes_received", "compute_s"}
    assert columns <= set(df.columns)
    assert (df["bytes_sent"] > 0).all() and (df["bytes_received"] > 0).all()
    assert df["node"].nunique() == QUICK["fig3"]["nodes"]


@pytest.mark.notebook
def test_notebook_targets_savings_and_intervals(fig3_out):
    seeds = QUICK["common"]["seeds"]
    sel = pd.read_csv(fig3_out / "fig3_targets.csv")
    assert {"target", "seed", "technique", "reached", "amount", "round", "elapsed_s", "mb"} <= set(sel.columns)
    assert len(sel) == len(QUICK["fig3"]["targets"]) * len(seeds) * (len(QUICK["fig3"]["techniques"]) + 1)
    reached = sel[sel["reached"]]
    assert len(reached) > 0 and (reached["mb"] > 0).all() and (reached["elapsed_s"] > 0).all()
    assert reached["accuracy"].ge(reached["target"] - 1e-9).all()
    sav = pd.read_csv(fig3_out / "fig3_savings.csv")
    assert {"target", "baseline", "n", "saving", "ci_low", "ci_high", "time_saving"} <= set(sav.columns)
    assert set(sav["baseline"]) == {"magnitude", "relevance", "dense"} and sav["n"].le(len(seeds)).all()
    both = sav.dropna(subset=["ci_low"])
    assert (both["ci_low"] <= both["saving"] + 1e-12).all() and (both["saving"] <= both["ci_high"] + 1e-12).all()
    assert sav["saving"].dropna().lt(1).all()
    curves = pd.read_csv(fig3_out / "fig3_curves.csv")
    assert {"technique", "amount", "round", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "mb"} <= set(
        curves.columns
    )


@pytest.mark.notebook
def test_notebook_half_csv(fig3_out):
    half = pd.read_csv(fig3_out / "fig3_half.csv")
    assert (half["bytes_fp16"] < 0.7 * half["bytes_fp32"]).all()
    assert half[["accuracy_fp32", "accuracy_fp16"]].stack().between(0, 1).all()


@pytest.mark.notebook
def test_notebook_figures_and_report(fig3_out):
    for name in ("fig3", "fig3_curves"):
        for ext in ("png", "svg"):
            assert (fig3_out / f"{name}.{ext}").stat().st_size > 1000
    text = (fig3_out / "report" / "fig3.md").read_text()
    assert "## Figure 3" in text and "Paper's claim" in text and "vs magnitude" in text
    assert "The claim" in text and "Half precision" in text
    assert "images: the standard error of one accuracy near" in text
