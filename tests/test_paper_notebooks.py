"""The paper-figure notebooks (fig1, fig2, fig4, table1) run under the quick profile; assertions are
on the files they write (CSV schema and ranges, figures, report sections), never on cell outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flexrel_core import experiments as ex
from flexrel_core.profiles import read_profile

pytestmark = pytest.mark.notebook
QUICK = read_profile("quick")
# prunable weights of digits_cnn (the quick model): the resolution of a measured sparsity
N_WEIGHTS = 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 128 * 64 + 64 * 10


def _figure_and_section(folder, figure: str, section: str) -> str:
    for fmt in ("png", "svg"):
        path = folder / f"{figure}.{fmt}"
        assert path.is_file() and path.stat().st_size > 1000, path
    report = folder / "report" / f"{section}.md"
    assert report.is_file()
    return report.read_text()


def test_fig1(run_quick):
    out = run_quick("fig1")
    params = QUICK["fig1"]
    weights = pd.read_csv(out / "fig1_weights.csv")
    assert {"layer", "row", "col", "m_norm", "r_norm", "score"} <= set(weights.columns)
    assert {f"kept_{m}" for m in ex.METHODS} <= set(weights.columns)
    assert len(weights) == params["max_rows"] * params["max_cols"]
    assert weights[["m_norm", "r_norm", "score"]].apply(lambda c: c.between(0, 1)).all().all()
    overlap = pd.read_csv(out / "fig1_overlap.csv")
    assert (
        len(overlap) == 3 and overlap[["jaccard_layer", "jaccard_model"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    kept = pd.read_csv(out / "fig1_kept.csv")
    assert np.allclose(kept["kept_model"], 1 - params["p"], atol=1 / N_WEIGHTS)
    text = _figure_and_section(out, "fig1_masks", "fig1")
    assert params["layer"] in text


def test_fig2(run_quick):
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
    text = _figure_and_section(out, "fig2_accuracy", "fig2")
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text and "The paper's claim" in text


def test_fig4(run_quick):
    out = run_quick("fig4")
    params = QUICK["fig4"]
    df = pd.read_csv(out / "fig4_delta.csv")
    assert {"schedule", "delta", "p", "seed", "val_accuracy", "test_accuracy", "sparsity"} <= set(df.columns)
    assert not df.duplicated(["schedule", "delta", "p", "seed"]).any()
    schedules = 2 if params["fine_tune_epochs"] > 0 else 1
    assert len(df) == schedules * len(params["deltas"]) * len(params["pruning_factors"]) * len(params["seeds"])
    assert df[["val_accuracy", "test_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.allclose(df["sparsity"], df["p"], atol=1 / N_WEIGHTS)
    text = _figure_and_section(out, "fig4_delta", "fig4")
    rec = ex.recommend_delta(df, schedule=params["recommend_on"])
    assert f"Recommended δ = {rec['delta']:g}" in text and ex.DELTA_RULE in text


def test_table1(run_quick):
    out = run_quick("table1")
    params = QUICK["table1"]
    costs = pd.read_csv(out / "table1_costs.csv")
    assert list(costs["method"]) == params["methods"]
    assert (costs["score_time_s"] > 0).all() and (costs["peak_memory_mib"] >= 0).all()
    assert (costs["nonzero_weights"] == N_WEIGHTS - round(params["p"] * N_WEIGHTS)).all()
    assert (costs["pruned_model_bytes"] > 0).all() and (costs["pruned_model_bytes"] < costs["dense_model_bytes"]).all()
    _figure_and_section(out, "table1_costs", "table1")
