"""Figure 3: the choice of pruning factor per target on a hand-made table, savings, report and figure,
and the notebook under the quick profile (the files it writes, their columns and value ranges)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flexrel_core.paper import fig3
from flexrel_core.workbook.config import FedConfig


def hand_table() -> pd.DataFrame:
    rows = []
    curves = {  # (technique, amount): accuracy after each round; mb per round = 1 - amount
        ("magnitude", 0.5): [0.70, 0.85, 0.90],
        ("magnitude", 0.9): [0.60, 0.80, 0.84],
        ("flexrel", 0.5): [0.70, 0.86, 0.91],
        ("flexrel", 0.9): [0.70, 0.85, 0.92],
        ("relevance", 0.5): [0.50, 0.60, 0.70],
    }
    for (t, a), accs in curves.items():
        rows.append(
            {"technique": t, "amount": a, "round": 0, "accuracy": 0.99, "elapsed_s": 0, "mb": 0} | {"eligible": False}
        )
        for r, acc in enumerate(accs, start=1):
            rows.append(
                {"technique": t, "amount": a, "round": r, "accuracy": acc, "elapsed_s": 10.0 * r}
                | {"mb": r * (1 - a), "eligible": True}
            )
    return pd.DataFrame(rows)


def test_target_selection_on_a_hand_made_table():
    sel = fig3.select_for_targets(hand_table(), [0.8, 0.85, 0.9, 0.95]).set_index(["target", "technique"])
    # magnitude: 0.9 reaches 0.80 at round 2 (0.2 MB) < 0.5 at round 2 (1.0 MB)
    assert sel.loc[(0.8, "magnitude"), ["amount", "round", "mb"]].tolist() == pytest.approx([0.9, 2, 0.2])
    # 0.85: magnitude needs 0.5 (round 2, 1 MB); FlexRel 0.9 at round 2 (0.2 MB)
    assert sel.loc[(0.85, "magnitude"), "amount"] == 0.5 and sel.loc[(0.85, "magnitude"), "mb"] == pytest.approx(1.0)
    assert sel.loc[(0.85, "flexrel"), "amount"] == 0.9 and sel.loc[(0.85, "flexrel"), "mb"] == pytest.approx(0.2)
    assert sel.loc[(0.9, "flexrel"), "amount"] == 0.9 and sel.loc[(0.9, "flexrel"), "round"] == 3
    assert not sel.loc[(0.95, "magnitude"), "reached"] and math.isnan(sel.loc[(0.95, "magnitude"), "mb"])
    assert not sel.loc[(0.8, "relevance"), "reached"]  # the ineligible round 0 does not count
    sav = fig3.bandwidth_savings(sel.reset_index()).set_index("target")
    assert sav.loc[0.85, "saving"] == pytest.approx(0.8)
    assert sav.loc[0.9, "saving"] == pytest.approx(1 - 0.3 / 1.5)
    assert sav.loc[0.9, "saving_after_warmup"] == pytest.approx(1 - 0.3 / 1.5)  # nothing sent before round 1
    assert math.isnan(sav.loc[0.95, "saving"])


def test_report_states_the_verdict_plainly():
    sel = fig3.select_for_targets(hand_table(), [0.8, 0.85, 0.9, 0.95])
    text = fig3.report(sel, fig3.bandwidth_savings(sel), None, FedConfig(), [0.5, 0.9])
    assert "## Figure 3" in text and "0.950 is reached by neither" in text
    assert "at 2 of the 3 targets" in text and "only at some targets" in text
    assert "80.0 %" in text
    fig = fig3.plot(sel)
    assert len(fig.axes) == 3


@pytest.fixture(scope="module")
def fig3_out(run_quick):
    return run_quick("fig3")


@pytest.mark.notebook
def test_notebook_rounds_csv(fig3_out):
    df = pd.read_csv(fig3_out / "fig3_rounds.csv")
    expected = {"technique", "amount", "round", "phase", "eligible", "accuracy", "elapsed_s", "mb"}
    expected |= {"flops_per_sample", "bytes_down", "bytes_up", "compute_s", "transfer_s", "round_s"}
    assert expected <= set(df.columns)
    assert set(df["technique"]) == {"magnitude", "flexrel", "relevance", "dense"}
    assert df["accuracy"].between(0, 1).all() and (df[["bytes_down", "bytes_up", "round_s"]] >= 0).all().all()
    assert np.allclose(df["round_s"], df["compute_s"] + df["transfer_s"])
    for (technique, amount), run in df.groupby(["technique", "amount"]):
        assert run["elapsed_s"].is_monotonic_increasing and run["mb"].is_monotonic_increasing
        pruned = run[run["phase"] == "pruned"]
        dense = run[run["phase"] == "dense"]
        if len(pruned):  # a pruned model travels in fewer bytes than the dense one, roughly by 1 - p
            ratio = pruned["bytes_down"].iloc[0] / dense["bytes_down"].iloc[0]
            assert ratio < 1 - amount + 0.1, (technique, amount, ratio)


@pytest.mark.notebook
def test_notebook_traffic_csv(fig3_out):
    df = pd.read_csv(fig3_out / "fig3_traffic.csv")
    assert {"technique", "amount", "round", "node", "samples", "bytes_sent", "bytes_received", "compute_s"} <= set(
        df.columns
    )
    assert (df["bytes_sent"] > 0).all() and (df["bytes_received"] > 0).all()
    assert df["node"].nunique() == 5


@pytest.mark.notebook
def test_notebook_targets_and_savings(fig3_out):
    sel = pd.read_csv(fig3_out / "fig3_targets.csv")
    assert {"target", "technique", "reached", "amount", "round", "elapsed_s", "mb", "mb_after_warmup"} <= set(
        sel.columns
    )
    reached = sel[sel["reached"]]
    assert len(reached) > 0 and (reached["mb"] > 0).all() and (reached["elapsed_s"] > 0).all()
    assert reached["accuracy"].ge(reached["target"] - 1e-9).all()
    sav = pd.read_csv(fig3_out / "fig3_savings.csv")
    assert {"target", "mb_magnitude", "mb_flexrel", "saving", "saving_after_warmup"} <= set(sav.columns)
    assert sav["saving"].dropna().lt(1).all()


@pytest.mark.notebook
def test_notebook_half_csv(fig3_out):
    half = pd.read_csv(fig3_out / "fig3_half.csv")
    assert (half["bytes_fp16"] < 0.7 * half["bytes_fp32"]).all()
    assert half[["accuracy_fp32", "accuracy_fp16"]].stack().between(0, 1).all()


@pytest.mark.notebook
def test_notebook_figure_and_report(fig3_out):
    for ext in ("png", "svg"):
        assert (fig3_out / f"fig3.{ext}").stat().st_size > 1000
    text = (fig3_out / "report" / "fig3.md").read_text()
    assert "## Figure 3" in text and "Paper's claim" in text
    assert "The claim" in text or "cannot be checked" in text
    assert "Half precision" in text
