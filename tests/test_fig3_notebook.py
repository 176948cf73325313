"""notebooks/fig3.ipynb under the quick profile: the files it writes, their columns and value ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def fig3(run_quick):
    return run_quick("fig3")


def test_rounds_csv(fig3):
    df = pd.read_csv(fig3 / "fig3_rounds.csv")
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


def test_traffic_csv(fig3):
    df = pd.read_csv(fig3 / "fig3_traffic.csv")
    assert {"technique", "amount", "round", "node", "samples", "bytes_sent", "bytes_received", "compute_s"} <= set(
        df.columns
    )
    assert (df["bytes_sent"] > 0).all() and (df["bytes_received"] > 0).all()
    assert df["node"].nunique() == 5


def test_targets_and_savings(fig3):
    sel = pd.read_csv(fig3 / "fig3_targets.csv")
    assert {"target", "technique", "reached", "amount", "round", "elapsed_s", "mb", "mb_after_warmup"} <= set(
        sel.columns
    )
    reached = sel[sel["reached"]]
    assert len(reached) > 0 and (reached["mb"] > 0).all() and (reached["elapsed_s"] > 0).all()
    assert reached["accuracy"].ge(reached["target"] - 1e-9).all()
    sav = pd.read_csv(fig3 / "fig3_savings.csv")
    assert {"target", "mb_magnitude", "mb_flexrel", "saving", "saving_after_warmup"} <= set(sav.columns)
    assert sav["saving"].dropna().lt(1).all()


def test_half_csv(fig3):
    half = pd.read_csv(fig3 / "fig3_half.csv")
    assert (half["bytes_fp16"] < 0.7 * half["bytes_fp32"]).all()
    assert half[["accuracy_fp32", "accuracy_fp16"]].stack().between(0, 1).all()


def test_figure_and_report(fig3):
    for ext in ("png", "svg"):
        assert (fig3 / f"fig3.{ext}").stat().st_size > 1000
    text = (fig3 / "report" / "fig3.md").read_text()
    assert "## Figure 3" in text and "Paper's claim" in text
    assert "The claim" in text or "cannot be checked" in text
    assert "Half precision" in text
