"""Table 1: rows, sizes and caching of the cost measurement on a tiny model, and the notebook under quick."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from nets import ConvFc
from quick_outputs import N_WEIGHTS, QUICK, figure_and_section

from flexrel_core.paper import table1
from flexrel_core.scores import METHODS


def test_score_costs_rows_and_sizes(tmp_path):
    model = ConvFc()
    x = torch.randn(8, 1, 4, 4)
    costs = table1.compute(model, x, p=0.75, repeats=2, key="tiny", cache_root=tmp_path)
    assert list(costs["method"]) == list(METHODS)
    n = 3 * 9 + 48 * 5
    assert (costs["nonzero_weights"] == n - round(0.75 * n)).all()
    assert (costs["score_time_s"] > 0).all() and (costs["peak_memory_mib"] >= 0).all()
    assert (costs["pruned_model_bytes"] < costs["dense_model_bytes"]).all()
    again = table1.compute(model, x, p=0.75, repeats=2, key="tiny", cache_root=tmp_path)
    pd.testing.assert_frame_equal(costs, again)  # cached
    assert "Table 1" in table1.report(costs)
    assert table1.overhead(costs) is None  # no training epoch timed
    assert table1.round_times(costs).shape == (2, len(METHODS))


def test_scoring_is_timed_beside_one_training_epoch(tmp_path):
    model = ConvFc()
    x = torch.randn(8, 1, 4, 4)
    train = torch.utils.data.TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 5, (32,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs = table1.compute(model, x, repeats=3, train_data=train, train_batch_size=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the epochs train copies
    assert (costs["train_samples"] == 32).all() and (costs["epoch_time_s"] > 0).all()
    o = table1.overhead(costs)
    rounds = table1.round_times(costs)["flexrel"]
    epoch = [float(v) for v in costs["epoch_round_times_s"].iloc[0].split()]
    assert o["ratio"] == pytest.approx(float((rounds / epoch).median())) and o["n"] == 3
    assert o["low"] <= o["ratio"] <= o["high"] and o["verdict"] in {"modest", "not modest"}
    section = table1.report(costs)
    assert "Modest overhead" in section and "paired per round" in section


@pytest.mark.notebook
def test_table1_notebook(run_quick):
    out = run_quick("table1")
    params = QUICK["table1"]
    costs = pd.read_csv(out / "table1_costs.csv")
    assert list(costs["method"]) == params["methods"]
    assert (costs["score_time_s"] > 0).all() and (costs["peak_memory_mib"] >= 0).all()
    assert (costs["nonzero_weights"] == N_WEIGHTS - round(params["p"] * N_WEIGHTS)).all()
    assert (costs["pruned_model_bytes"] > 0).all() and (costs["pruned_model_bytes"] < costs["dense_model_bytes"]).all()
    figure_and_section(out, "table1_costs", "table1")
