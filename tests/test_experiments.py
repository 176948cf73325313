"""Sweeps, summaries and report text of the paper-figure notebooks (flexrel_core.experiments)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from flexrel_core import experiments as ex
from flexrel_core.config import TrainConfig
from flexrel_core.data import tensors
from flexrel_core.relevance import parameter_relevance

BASE = TrainConfig(dataset="digits", image_size=8, epochs=2, seed=0)
PCFG = ex.PruneConfig(inference_samples=64, fine_tune_epochs=1)
GRID = [0.0, 0.5, 0.9]
SHIFT = ex.shift_spec([0, 1, 2], None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("exp_cache")


@pytest.fixture(scope="module")
def sweep(cache):
    start = time.perf_counter()
    df = ex.accuracy_sweep(
        BASE, PCFG, pruning_factors=GRID, seeds=[0, 1], delta=0.5, shift=SHIFT, cache_root=cache, device="cpu"
    )
    return df, time.perf_counter() - start


def test_sweep_one_row_per_condition_method_p_seed(sweep):
    df, _ = sweep
    assert len(df) == 2 * 3 * len(GRID) * 2
    assert not df.duplicated(["condition", "method", "p", "seed"]).any()
    assert set(df["condition"]) == {"in-distribution", "shifted"}
    assert (
        df[["one_shot_accuracy", "fine_tuned_accuracy", "dense_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    assert (df.loc[df.method == "magnitude", "delta"] == 0).all() and (
        df.loc[df.method == "relevance", "delta"] == 1
    ).all()


def test_measured_sparsity_is_p_before_and_after_fine_tuning(sweep):
    df, _ = sweep
    n = 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 128 * 64 + 64 * 10  # digits_cnn prunable weights
    assert np.allclose(df["sparsity"], df["p"], atol=1 / n)
    assert np.allclose(df["fine_tuned_sparsity"], df["p"], atol=1 / n)


def test_accuracy_at_p0_is_dense_accuracy(sweep):
    df, _ = sweep
    zero = df[df.p == 0]
    assert (zero["one_shot_accuracy"] == zero["dense_accuracy"]).all()
    assert (zero["fine_tuned_accuracy"] == zero["dense_accuracy"]).all()
    # the shift changes the test split, so the dense accuracy is measured again on it
    dense = df.groupby(["condition", "seed"])["dense_accuracy"].nunique()
    assert (dense == 1).all()


def test_shifted_relevance_uses_shifted_inference_split(cache):
    setup = ex.prepare(BASE, PCFG, shift=SHIFT, cache_root=cache, device="cpu")
    x, y = tensors(setup.data.inference, PCFG.inference_samples)
    assert set(y.tolist()) == {0, 1, 2}
    expected = parameter_relevance(setup.fresh_model(), x, batch_size=256)
    for name, rel in setup.relevance.items():
        torch.testing.assert_close(rel, expected[name])
    assert set(tensors(setup.data.test)[1].tolist()) == {0, 1, 2}
    plain = ex.prepare(BASE, PCFG, cache_root=cache, device="cpu")
    assert plain.relevance_id != setup.relevance_id and plain.eval_id != setup.eval_id


def test_rerun_is_cached_and_identical(sweep, cache):
    df, first = sweep
    start = time.perf_counter()
    again = ex.accuracy_sweep(
        BASE, PCFG, pruning_factors=GRID, seeds=[0, 1], delta=0.5, shift=SHIFT, cache_root=cache, device="cpu"
    )
    assert time.perf_counter() - start < first / 3
    pd.testing.assert_frame_equal(df, again)


def test_magnitude_fine_tuned_once_for_both_conditions(tmp_path, monkeypatch):
    calls = []
    real = ex._fine_tune
    monkeypatch.setattr(ex, "_fine_tune", lambda setup, delta, *a: calls.append(delta) or real(setup, delta, *a))
    ex.accuracy_sweep(BASE, PCFG, pruning_factors=[0.5], seeds=[0], shift=SHIFT, cache_root=tmp_path, device="cpu")
    # in-distribution: magnitude, relevance, FlexRel; shifted: relevance and FlexRel only (new relevance)
    assert sorted(calls) == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_delta_sweep_shares_points_with_accuracy_sweep(sweep, cache):
    df, _ = sweep
    d = ex.delta_sweep(BASE, PCFG, deltas=[0.0, 0.5, 1.0], pruning_factors=[0.5, 0.9], seeds=[0], cache_root=cache)
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
    rec = ex.recommend_delta(_delta_frame(val, test))
    assert rec["delta"] == 0.5
    assert rec["test_accuracy"] == pytest.approx(0.70)
    assert rec["best_delta_per_p"] == {0.5: 1.0, 0.9: 0.5}
    tie = {0.0: [0.8, 0.8], 0.5: [0.9, 0.7], 1.0: [0.7, 0.9]}
    assert ex.recommend_delta(_delta_frame(tie, tie))["delta"] == 0.0
    with pytest.raises(ValueError, match="schedule"):
        ex.recommend_delta(_delta_frame(val, test), schedule="fine-tuned")


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
    s = ex.pruning_summary(pd.DataFrame(rows)).set_index("threshold_points")
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
    s = ex.pruning_summary(pd.DataFrame(rows), thresholds=(1, 2)).set_index("threshold_points")
    assert s["max_p_magnitude"].to_dict() == {1.0: 0.0, 2.0: 0.5}
    assert s["dense_accuracy"].iloc[0] == pytest.approx(0.85)


def test_curve_differences_known_answers():
    # FlexRel - magnitude, in points: 0, +0.5, +1.5, -2, +10
    rows = _curve("magnitude", [0.9, 0.895, 0.88, 0.84, 0.5]) + _curve("flexrel", [0.9, 0.9, 0.895, 0.82, 0.6])
    diff = ex.curve_differences(pd.DataFrame(rows))
    assert diff == {("in-distribution", "one-shot"): ([0.8, 0.95], [0.9])}


def test_highest_p_within_is_nan_when_first_point_fails():
    assert np.isnan(ex.highest_p_within(pd.Series([3.0, 0.0], index=[0.5, 0.9]), 1.0))


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
    assert ex.claim_verdict(gains)[0] == verdict


def test_fig2_report_states_dense_thresholds_gain_and_verdict(sweep):
    df, _ = sweep
    summary = ex.pruning_summary(df)
    text = ex.fig2_report(df, summary, delta=0.5, fine_tune_epochs=1)
    dense = df[df.condition == "in-distribution"].groupby("seed")["dense_accuracy"].first().mean()
    assert f"{100 * dense:.1f} %" in text
    assert "FlexRel − magnitude" in text and "within 1, 2 and 5 points" in text
    assert "The paper's claim" in text
    assert any(w in text for w in ("holds here", "does not hold here", "holds only partly here"))
    assert len(summary) == 2 * 2 * 3  # conditions x schedules x thresholds


def test_fig4_report_states_delta_and_rule():
    val = {0.0: [0.9, 0.5], 0.5: [0.9, 0.7], 1.0: [0.95, 0.65]}
    df = _delta_frame(val, val)
    text = ex.fig4_report(df, ex.recommend_delta(df))
    assert "Recommended δ = 0.5" in text and ex.DELTA_RULE in text


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_mask_comparison_masks_overlaps_and_values():
    model = Tiny()
    x = torch.randn(16, 1, 4, 4)
    rel = parameter_relevance(model, x)
    res = ex.mask_comparison(model, rel, layer="fc.weight", p=0.6, delta=0.5)
    w, overlap, kept = res["weights"], res["overlap"], res["kept"]
    assert len(w) == 5 * 48 and w[["m_norm", "r_norm"]].apply(lambda c: c.between(0, 1)).all().all()
    assert kept["kept_model"].to_numpy() == pytest.approx([0.4] * 3, abs=1e-2)
    for m in ex.METHODS:  # the layer's share of kept weights agrees with the flags
        assert w[f"kept_{m}"].mean() == pytest.approx(kept.set_index("method").loc[m, "kept_layer"])
    assert overlap["jaccard_layer"].between(0, 1).all()
    assert model.fc.weight.ne(0).all()  # the given model is left unpruned
    same = ex.mask_comparison(model, rel, layer="conv.weight", p=0.6, delta=0.0, max_rows=2, max_cols=5)
    assert len(same["weights"]) == 10 and set(same["weights"]["col"]) == set(range(5))
    row = same["overlap"].set_index(["method_a", "method_b"]).loc[("magnitude", "flexrel")]
    assert row["jaccard_model"] == 1.0  # delta = 0 is magnitude pruning
    with pytest.raises(ValueError, match="unknown layer"):
        ex.mask_comparison(model, rel, layer="nope.weight", p=0.5)
    assert "Spearman" in ex.fig1_report(res)


def test_peak_memory_sees_a_known_allocation():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # another 4 MB while a is alive
        return float(b.sum())

    peak = ex.peak_memory(work)
    assert 8_000_000 <= peak < 12_000_000


def test_score_costs_rows_and_sizes(tmp_path):
    model = Tiny()
    x = torch.randn(8, 1, 4, 4)
    costs = ex.score_costs(model, x, p=0.75, repeats=2, key="tiny", cache_root=tmp_path)
    assert list(costs["method"]) == list(ex.METHODS)
    n = 3 * 9 + 48 * 5
    assert (costs["nonzero_weights"] == n - round(0.75 * n)).all()
    assert (costs["score_time_s"] > 0).all() and (costs["peak_memory_mib"] >= 0).all()
    assert (costs["pruned_model_bytes"] < costs["dense_model_bytes"]).all()
    again = ex.score_costs(model, x, p=0.75, repeats=2, key="tiny", cache_root=tmp_path)
    pd.testing.assert_frame_equal(costs, again)  # cached
    assert "Table 1" in ex.table1_report(costs)


def test_markdown_table():
    text = ex.markdown_table(pd.DataFrame({"a": [1.23456, 2.0], "b": ["x", "y"]}), ".3g")
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x |", "| 2 | y |"]


def test_unknown_method_refused():
    with pytest.raises(ValueError, match="unknown method"):
        ex.method_delta("random", 0.5)
