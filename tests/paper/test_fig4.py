"""Figure 4: the δ sweep shares points with Figure 2, δ is chosen on validation data only, and the
notebook under the quick profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from quick_outputs import N_WEIGHTS, QUICK, figure_and_section

from flexrel_core.paper import fig4


def test_delta_sweep_shares_points_with_accuracy_sweep(sweep):
    df = sweep.df
    d = fig4.compute(
        sweep.base, sweep.pcfg, deltas=[0.0, 0.5, 1.0], pruning_factors=[0.5, 0.9], seeds=[0], cache_root=sweep.cache
    )
    assert len(d) == 2 * 3 * 2 and not d.duplicated(["schedule", "delta", "p", "seed"]).any()
    ind = df[(df.condition == "in-distribution") & (df.seed == 0) & (df.p == 0.9)].set_index("delta")
    got = d[(d.schedule == "one-shot") & (d.p == 0.9)].set_index("delta")["test_accuracy"]
    for delta in (0.0, 0.5, 1.0):
        assert got[delta] == ind.loc[delta, "one_shot_accuracy"]


def _delta_frame(val: dict, test: dict, seeds=(0,), dense_val: float = 0.95) -> pd.DataFrame:
    """One row per (schedule fine-tuned, delta, p, seed); ``val[delta]``/``test[delta]`` list one
    accuracy per p of (0.5, 0.9, 0.99); seeds get the same numbers shifted by 0.001 * seed."""
    rows = []
    for seed in seeds:
        for delta in val:
            for p, v, t in zip((0.5, 0.9, 0.99), val[delta], test[delta], strict=True):
                rows.append(
                    {"schedule": "fine-tuned", "delta": delta, "p": p, "seed": seed, "val_accuracy": v + 0.001 * seed}
                    | {"test_accuracy": t + 0.001 * seed, "dense_val_accuracy": dense_val, "dense_test_accuracy": 0.95}
                )
    return pd.DataFrame(rows)


# At p = 0.99 every model is broken (magnitude 40 points below dense): outside the useful range.
VAL = {0.0: [0.94, 0.91, 0.55], 0.5: [0.94, 0.93, 0.50], 1.0: [0.96, 0.85, 0.70]}
TEST = {0.0: [0.99, 0.99, 0.99], 0.5: [0.80, 0.60, 0.10], 1.0: [0.80, 0.60, 0.10]}  # test would pick 0: ignored


def test_useful_range_is_where_fine_tuned_magnitude_works_on_validation():
    df = _delta_frame(VAL, TEST)
    assert fig4.useful_range(df, within=5.0) == ([0.5, 0.9], "fine-tuned")
    assert fig4.useful_range(df, within=2.0) == ([0.5], "fine-tuned")
    assert fig4.useful_range(df, within=0.1) == ([0.5], "fine-tuned")  # none qualifies: the smallest p


def test_recommend_delta_chooses_on_validation_in_the_useful_range_and_breaks_ties_low():
    rec = fig4.recommend_delta(_delta_frame(VAL, TEST, seeds=(0, 1, 2)), "fine-tuned")
    # useful p = 0.5, 0.9: mean val 0.925 (δ 0), 0.935 (δ 0.5), 0.905 (δ 1); p = 0.99 would favour δ = 1
    assert rec["delta"] == 0.5 and rec["useful_p"] == [0.5, 0.9]
    assert rec["test_accuracy"] == pytest.approx(0.70 + 0.001)
    assert rec["best_delta_per_seed"] == {0: 0.5, 1: 0.5, 2: 0.5}
    gain = rec["test_gain_over_magnitude"]
    assert gain["mean"] == pytest.approx(0.70 - 0.99) and gain["n"] == 3
    tie = {0.0: [0.94, 0.93, 0.5], 0.5: [0.95, 0.92, 0.5], 1.0: [0.93, 0.94, 0.5]}
    assert fig4.recommend_delta(_delta_frame(tie, tie), "fine-tuned")["delta"] == 0.0
    with pytest.raises(ValueError, match="schedule"):
        fig4.recommend_delta(_delta_frame(VAL, TEST), schedule="one-shot")


def test_fig4_report_states_delta_rule_range_and_agreement():
    df = _delta_frame(VAL, TEST, seeds=(0, 1))
    recs = [fig4.recommend_delta(df, "fine-tuned")]
    text = fig4.report(df, recs, profile_delta=0.5)
    assert "recommended δ = 0.5" in text and fig4.DELTA_RULE in text and "p = 0.5, 0.9" in text
    assert "recommendation agrees" in text
    assert "differs" in fig4.report(df, recs, profile_delta=0.3)


@pytest.mark.notebook
def test_fig4_notebook(run_quick):
    out = run_quick("fig4")
    params = QUICK["fig4"]
    seeds = QUICK["common"]["seeds"]
    df = pd.read_csv(out / "fig4_delta.csv")
    assert {"schedule", "delta", "p", "seed", "val_accuracy", "test_accuracy", "sparsity"} <= set(df.columns)
    assert not df.duplicated(["schedule", "delta", "p", "seed"]).any()
    schedules = 2 if QUICK["common"]["fine_tune_epochs"] > 0 else 1
    assert len(df) == schedules * len(params["deltas"]) * len(params["pruning_factors"]) * len(seeds)
    assert df[["val_accuracy", "test_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.allclose(df["sparsity"], df["p"], atol=1 / N_WEIGHTS)
    rec = pd.read_csv(out / "fig4_recommendation.csv")
    assert set(rec["schedule"]) == set(df["schedule"]) and rec["delta"].isin(params["deltas"]).all()
    text = figure_and_section(out, "fig4_delta", "fig4")
    for r in rec.itertuples():
        assert f"{r.schedule}: recommended δ = {r.delta:g}" in text
    assert fig4.DELTA_RULE in text and f"use δ = {QUICK['common']['delta']:g}" in text
