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
    assert np.allclose(df["sparsity"], df["p"], atol=1 / N_WEIGHTS)  # the sweep and quick share digits_cnn
    assert np.allclose(df["fine_tuned_sparsity"], df["p"], atol=1 / N_WEIGHTS)


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


def test_reach_is_per_seed_and_known():
    rows = (
        _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5])  # drops 0, .5, 2, 6, 40 points
        + _curve("flexrel", [0.9, 0.9, 0.895, 0.87, 0.6])  # drops 0, 0, .5, 3, 30
        + _curve("relevance", [0.9, 0.85, 0.895, 0.9, 0.9])  # leaves the 1-point band at 0.5: stays out
    )
    r = fig2.reach(pd.DataFrame(rows)).set_index(["method", "threshold_points"])["max_p"]
    assert r["magnitude"].to_dict() == {1.0: 0.5, 2.0: 0.8, 5.0: 0.8}
    assert r["flexrel"].to_dict() == {1.0: 0.8, 2.0: 0.8, 5.0: 0.9}
    assert r["relevance"].to_dict() == {1.0: 0.0, 2.0: 0.0, 5.0: 0.95}


def test_summary_gain_is_paired_over_seeds_with_its_interval():
    # seed 0: FlexRel reaches 0.8 vs magnitude 0.5 within 1 point; seed 1 (dense 0.8): 0.9 vs 0.8; seed 2: 0.5 vs 0.5
    rows = (
        _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5])
        + _curve("flexrel", [0.9, 0.9, 0.895, 0.87, 0.6])
        + _curve("magnitude", [0.8, 0.8, 0.795, 0.7, 0.5], seed=1, dense=0.8)
        + _curve("flexrel", [0.8, 0.8, 0.8, 0.795, 0.5], seed=1, dense=0.8)
        + _curve("magnitude", [0.9, 0.9, 0.5, 0.5, 0.5], seed=2)
        + _curve("flexrel", [0.9, 0.9, 0.5, 0.5, 0.5], seed=2)
    )
    s = fig2.summarize(pd.DataFrame(rows), thresholds=(1.0,)).iloc[0]
    gains = [0.3, 0.1, 0.0]
    assert s["n_seeds"] == 3 and s["schedule"] == "one-shot"  # fine-tuned is all NaN: skipped
    assert s["gain_flexrel"] == pytest.approx(np.mean(gains))
    half = 4.302652729911275 * np.std(gains, ddof=1) / np.sqrt(3)  # t_{0.975,2} * sd / sqrt(n)
    assert (s["gain_flexrel_ci_low"], s["gain_flexrel_ci_high"]) == pytest.approx(
        (0.1333 - half, 0.1333 + half), abs=1e-3
    )
    assert s["verdict_flexrel"] == "no detectable difference"  # three seeds, wide interval
    assert s["max_p_magnitude"] == pytest.approx((0.5 + 0.8 + 0.5) / 3)


def test_differences_are_paired_per_p():
    rows = _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5]) + _curve("flexrel", [0.9, 0.9, 0.895, 0.82, 0.6])
    rows += _curve("magnitude", [0.9, 0.89, 0.86, 0.80, 0.4], seed=1) + _curve(
        "flexrel", [0.9, 0.9, 0.885, 0.79, 0.52], seed=1
    )
    d = fig2.differences(pd.DataFrame(rows), others=("flexrel",)).set_index("p")
    assert d.loc[0.95, "mean"] == pytest.approx((0.1 + 0.12) / 2) and d.loc[0.95, "n"] == 2
    assert d.loc[0.9, "mean"] == pytest.approx((-0.02 - 0.01) / 2)
    assert (d.loc[0.0, ["mean", "ci_low", "ci_high"]] == 0).all()


def test_highest_p_within_is_nan_when_first_point_fails():
    assert np.isnan(fig2.highest_p_within(pd.Series([3.0, 0.0], index=[0.5, 0.9]), 1.0))


@pytest.mark.parametrize(
    ("directions", "verdict"),
    [
        (["higher", "higher", "higher"], "holds"),
        (["higher", "no detectable difference", "no detectable difference"], "holds partly"),
        (["no detectable difference"] * 3, "not supported"),
        (["lower", "no detectable difference", "lower"], "does not hold"),
        (["lower", "lower", "lower"], "reversed"),
        (["higher", "lower", "no detectable difference"], "mixed"),
        (["undetermined"], "undetermined"),
    ],
)
def test_claim_verdict(directions, verdict):
    assert fig2.claim_verdict(directions)[0] == verdict


def test_fig2_report_states_dense_gain_interval_and_verdict(sweep):
    df = sweep.df
    summary = fig2.summarize(df)
    text = fig2.report(df, summary, delta=0.5, fine_tune_epochs=1)
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text
    assert "FlexRel − magnitude [95 % CI]" in text and "within 1, 2 and 5 points" in text
    assert "The paper's claim" in text and "global" in text and "magnitude pruning" in text
    assert len(summary) == 2 * 2 * 3  # conditions x schedules x thresholds
    assert fig2.plot(df, fig2.differences(df)).axes  # draws accuracy and difference panels


@pytest.mark.notebook
def test_fig2_notebook(run_quick):
    out = run_quick("fig2")
    params = QUICK["fig2"]
    df = pd.read_csv(out / "fig2_accuracy.csv")
    columns = {"condition", "method", "delta", "p", "seed", "dense_accuracy", "one_shot_accuracy"}
    assert columns | {"fine_tuned_accuracy", "sparsity", "fine_tuned_sparsity"} <= set(df.columns)
    # one row per (condition, method, p, seed), all of them present
    assert not df.duplicated(["condition", "method", "p", "seed"]).any()
    assert len(df) == 2 * len(params["methods"]) * len(params["pruning_factors"]) * len(QUICK["common"]["seeds"])
    assert set(df["p"]) == set(params["pruning_factors"]) and set(df["seed"]) == set(QUICK["common"]["seeds"])
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
    assert {f"max_p_{m}" for m in params["methods"]} <= set(summary.columns)
    assert {"gain_flexrel", "gain_flexrel_ci_low", "gain_flexrel_ci_high", "verdict_flexrel"} <= set(summary.columns)
    assert (summary["gain_flexrel_ci_low"] <= summary["gain_flexrel"] + 1e-12).all()
    diff = pd.read_csv(out / "fig2_differences.csv")
    assert {"condition", "schedule", "p", "comparison", "n", "mean", "ci_low", "ci_high"} <= set(diff.columns)
    assert set(diff["comparison"]) == {"flexrel - magnitude", "relevance - magnitude"}
    assert (diff["n"] == len(QUICK["common"]["seeds"])).all() and diff["mean"].between(-1, 1).all()
    text = figure_and_section(out, "fig2_accuracy", "fig2")
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text and "The paper's claim" in text
