"""Figure 2: the sweep (one row per condition, method, p and seed), its summary and verdict, and the
notebook under the quick profile (assertions on the files it writes, never on cell outputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from quick_outputs import N_WEIGHTS, QUICK, figure_and_section

from flexrel_core.paper import fig2


def test_sweep_one_row_per_condition_method_p_seed(sweep):
    df = sweep.df
    assert len(df) == 2 * 3 * len(sweep.grid) * 2
    assert not df.duplicated(["condition", "method", "p", "seed"]).any()
    assert set(df["condition"]) == {"in-distribution", "shifted"}
    assert (
        df[["one_shot_accuracy", "fine_tuned_accuracy", "dense_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    assert (df.loc[df.method == "magnitude", "delta"] == 0).all() and (
        df.loc[df.method == "relevance", "delta"] == 1
    ).all()


def test_measured_sparsity_is_p_before_and_after_fine_tuning(sweep):
    df = sweep.df
    n = 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 128 * 64 + 64 * 10  # digits_cnn prunable weights
    assert np.allclose(df["sparsity"], df["p"], atol=1 / n)
    assert np.allclose(df["fine_tuned_sparsity"], df["p"], atol=1 / n)


def test_accuracy_at_p0_is_dense_accuracy(sweep):
    df = sweep.df
    zero = df[df.p == 0]
    assert (zero["one_shot_accuracy"] == zero["dense_accuracy"]).all()
    assert (zero["fine_tuned_accuracy"] == zero["dense_accuracy"]).all()
    # the shift changes the test split, so the dense accuracy is measured again on it
    dense = df.groupby(["condition", "seed"])["dense_accuracy"].nunique()
    assert (dense == 1).all()


def _curve(method: str, accs: list[float], seed: int = 0, dense: float = 0.9) -> list[dict]:
    grid = [0.0, 0.5, 0.8, 0.9, 0.95]
    return [
        {"method": method, "p": p, "seed": seed, "dense_accuracy": dense, "one_shot_accuracy": a}
        | {"fine_tuned_accuracy": np.nan}
        for p, a in zip(grid, accs, strict=True)
    ]


def test_pruning_summary_known_answers():
    rows = (
        _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5])  # drops 0, .5, 2, 6, 40 points
        + _curve("flexrel", [0.9, 0.9, 0.895, 0.87, 0.6])  # drops 0, 0, .5, 3, 30
        + _curve("relevance", [0.9, 0.85, 0.895, 0.9, 0.9])  # leaves the 1-point band at 0.5: stays out
    )
    s = fig2.summarize(pd.DataFrame(rows)).set_index("threshold_points")
    assert list(s["schedule"]) == ["one-shot"] * 3  # fine-tuned is all NaN: skipped
    assert s["max_p_magnitude"].to_dict() == {1.0: 0.5, 2.0: 0.8, 5.0: 0.8}
    assert s["max_p_flexrel"].to_dict() == {1.0: 0.8, 2.0: 0.8, 5.0: 0.9}
    assert s["max_p_relevance"].to_dict() == {1.0: 0.0, 2.0: 0.0, 5.0: 0.95}
    assert s["flexrel_gain"].to_dict() == {1.0: pytest.approx(0.3), 2.0: 0.0, 5.0: pytest.approx(0.1)}
    assert s["dense_accuracy"].iloc[0] == 0.9


def test_pruning_summary_averages_drops_over_seeds():
    # seed 0 drops 0.5 points at p = 0.5, seed 1 drops 2.5: mean 1.5 -> outside 1, inside 2
    rows = _curve("magnitude", [0.9, 0.895, 0.1, 0.1, 0.1]) + _curve(
        "magnitude", [0.8, 0.775, 0.1, 0.1, 0.1], seed=1, dense=0.8
    )
    s = fig2.summarize(pd.DataFrame(rows), thresholds=(1, 2)).set_index("threshold_points")
    assert s["max_p_magnitude"].to_dict() == {1.0: 0.0, 2.0: 0.5}
    assert s["dense_accuracy"].iloc[0] == pytest.approx(0.85)


def test_curve_differences_known_answers():
    # FlexRel - magnitude, in points: 0, +0.5, +1.5, -2, +10
    rows = _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5]) + _curve("flexrel", [0.9, 0.9, 0.895, 0.82, 0.6])
    diff = fig2.curve_differences(pd.DataFrame(rows))
    assert diff == {("in-distribution", "one-shot"): ([0.8, 0.95], [0.9])}


def test_highest_p_within_is_nan_when_first_point_fails():
    assert np.isnan(fig2.highest_p_within(pd.Series([3.0, 0.0], index=[0.5, 0.9]), 1.0))


@pytest.mark.parametrize(
    ("gains", "verdict"),
    [
        ([0.1, 0.05, 0.02], "holds"),
        ([0.1, 0.0, 0.0], "holds partly"),
        ([0.0, 0.0, 0.0], "does not hold"),
        ([-0.1, 0.0, -0.05], "does not hold"),
        ([0.1, -0.1, 0.0], "mixed"),
        ([np.nan], "undetermined"),
    ],
)
def test_claim_verdict(gains, verdict):
    assert fig2.claim_verdict(gains)[0] == verdict


def test_fig2_report_states_dense_thresholds_gain_and_verdict(sweep):
    df = sweep.df
    summary = fig2.summarize(df)
    text = fig2.report(df, summary, delta=0.5, fine_tune_epochs=1)
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text
    assert "FlexRel − magnitude" in text and "within 1, 2 and 5 points" in text
    assert "The paper's claim" in text
    assert any(w in text for w in ("holds here", "does not hold here", "holds only partly here"))
    assert len(summary) == 2 * 2 * 3  # conditions x schedules x thresholds


@pytest.mark.notebook
def test_fig2_notebook(run_quick):
    out = run_quick("fig2")
    params = QUICK["fig2"]
    df = pd.read_csv(out / "fig2_accuracy.csv")
    columns = {"condition", "method", "delta", "p", "seed", "dense_accuracy", "one_shot_accuracy"}
    assert columns | {"fine_tuned_accuracy", "sparsity", "fine_tuned_sparsity"} <= set(df.columns)
    # one row per (condition, method, p, seed), all of them present
    assert not df.duplicated(["condition", "method", "p", "seed"]).any()
    assert len(df) == 2 * len(params["methods"]) * len(params["pruning_factors"]) * len(params["seeds"])
    assert set(df["p"]) == set(params["pruning_factors"]) and set(df["seed"]) == set(params["seeds"])
    accuracy = df[["dense_accuracy", "one_shot_accuracy", "fine_tuned_accuracy"]]
    assert accuracy.apply(lambda c: c.between(0, 1)).all().all()
    # measured sparsity of every point is its pruning factor, after fine-tuning too
    assert np.allclose(df["sparsity"], df["p"], atol=1 / N_WEIGHTS)
    assert np.allclose(df["fine_tuned_sparsity"], df["p"], atol=1 / N_WEIGHTS)
    zero = df[df["p"] == 0]
    assert (zero["one_shot_accuracy"] == zero["dense_accuracy"]).all()
    assert (zero["fine_tuned_accuracy"] == zero["dense_accuracy"]).all()
    summary = pd.read_csv(out / "fig2_summary.csv")
    assert set(summary["threshold_points"]) == {1.0, 2.0, 5.0}
    assert {f"max_p_{m}" for m in params["methods"]} | {"flexrel_gain"} <= set(summary.columns)
    text = figure_and_section(out, "fig2_accuracy", "fig2")
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text and "The paper's claim" in text
