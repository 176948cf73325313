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


def _delta_frame(val: dict, test: dict) -> pd.DataFrame:
    rows = []
    for delta in val:
        for p, (v, t) in enumerate(zip(val[delta], test[delta], strict=True)):
            rows.append(
                {"schedule": "one-shot", "delta": delta, "p": 0.5 + 0.4 * p, "seed": 0, "val_accuracy": v}
                | {"test_accuracy": t}
            )
    return pd.DataFrame(rows)


def test_recommend_delta_chooses_on_validation_and_breaks_ties_low():
    val = {0.0: [0.90, 0.50], 0.5: [0.90, 0.70], 1.0: [0.95, 0.65]}
    test = {0.0: [0.99, 0.99], 0.5: [0.80, 0.60], 1.0: [0.80, 0.60]}  # test would pick 0.0: must be ignored
    rec = fig4.recommend_delta(_delta_frame(val, test))
    assert rec["delta"] == 0.5
    assert rec["test_accuracy"] == pytest.approx(0.70)
    assert rec["best_delta_per_p"] == {0.5: 1.0, 0.9: 0.5}
    tie = {0.0: [0.8, 0.8], 0.5: [0.9, 0.7], 1.0: [0.7, 0.9]}
    assert fig4.recommend_delta(_delta_frame(tie, tie))["delta"] == 0.0
    with pytest.raises(ValueError, match="schedule"):
        fig4.recommend_delta(_delta_frame(val, test), schedule="fine-tuned")


def test_fig4_report_states_delta_and_rule():
    val = {0.0: [0.9, 0.5], 0.5: [0.9, 0.7], 1.0: [0.95, 0.65]}
    df = _delta_frame(val, val)
    text = fig4.report(df, fig4.recommend_delta(df))
    assert "Recommended δ = 0.5" in text and fig4.DELTA_RULE in text


@pytest.mark.notebook
def test_fig4_notebook(run_quick):
    out = run_quick("fig4")
    params = QUICK["fig4"]
    df = pd.read_csv(out / "fig4_delta.csv")
    assert {"schedule", "delta", "p", "seed", "val_accuracy", "test_accuracy", "sparsity"} <= set(df.columns)
    assert not df.duplicated(["schedule", "delta", "p", "seed"]).any()
    schedules = 2 if params["fine_tune_epochs"] > 0 else 1
    assert len(df) == schedules * len(params["deltas"]) * len(params["pruning_factors"]) * len(params["seeds"])
    assert df[["val_accuracy", "test_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.allclose(df["sparsity"], df["p"], atol=1 / N_WEIGHTS)
    text = figure_and_section(out, "fig4_delta", "fig4")
    rec = fig4.recommend_delta(df, schedule=params["recommend_on"])
    assert f"Recommended δ = {rec['delta']:g}" in text and fig4.DELTA_RULE in text
