"""Figure 3's cooperative-learning simulator: cost model, shards, fixed masks, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from flexrel_core.masks import get_masks, prune
from flexrel_core.paper import federated as fl
from flexrel_core.scores import pruning_scores
from flexrel_core.workbook.config import PARTITIONS, FedConfig, TrainConfig
from flexrel_core.workbook.pipeline import data_for, new_model

TINY = FedConfig(nodes=2, warmup_rounds=1, rounds=2, local_batch_size=64, inference_samples=32)


@pytest.fixture(scope="module")
def data():
    return data_for(TrainConfig(image_size=8))


def test_cost_model_arithmetic():
    assert fl.compute_time_s(1e6, 100, 2, 1e9) == pytest.approx(3 * 1e6 * 100 * 2 / 1e9)
    assert fl.transfer_time_s(125_000, 1e6, 0.05) == pytest.approx(1.0 + 0.05)
    cfg = FedConfig(bandwidth_bps=8e6, latency_s=0.01)
    r = fl.round_time_s([0.5, 2.0, 1.0], [1_000_000] * 3, [500_000, 1_000_000, 250_000], cfg)
    assert r["compute_s"] == 2.0
    assert r["transfer_s"] == pytest.approx((1.0 + 0.01) + (1.0 + 0.01))  # slowest link: 1 MB down + 1 MB up
    assert r["round_s"] == pytest.approx(r["compute_s"] + r["transfer_s"])
    shared = fl.round_time_s([1.0], [1_000_000, 1_000_000], [1_000_000, 1_000_000], FedConfig(shared_link=True))
    assert shared["transfer_s"] == pytest.approx(2 * (8 * 2_000_000 / 1e6 + 0.05))


@pytest.mark.parametrize("shared_link", [False, True])
def test_round_time_is_monotone_in_bytes_and_flops(shared_link):
    cfg = FedConfig(shared_link=shared_link)
    base = fl.round_time_s([fl.compute_time_s(1e6, 200, 1, cfg.node_flops)] * 2, [10_000] * 2, [10_000] * 2, cfg)
    more_bytes = fl.round_time_s([base["compute_s"]] * 2, [20_000] * 2, [10_000] * 2, cfg)
    more_flops = fl.round_time_s([fl.compute_time_s(2e6, 200, 1, cfg.node_flops)] * 2, [10_000] * 2, [10_000] * 2, cfg)
    assert more_bytes["round_s"] > base["round_s"] and more_bytes["compute_s"] == base["compute_s"]
    assert more_flops["round_s"] > base["round_s"] and more_flops["transfer_s"] == base["transfer_s"]


def test_forward_flops_counts_nonzero_weights():
    lin = nn.Sequential(nn.Linear(10, 4))
    assert fl.forward_flops(lin, (10,)) == 2 * 40
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))
    assert fl.forward_flops(conv, (2, 5, 5)) == 2 * (2 * 3 * 9) * 25 + 2 * 150
    prune(conv, pruning_scores(conv, method="magnitude"), 0.5, scope="layer")
    assert fl.forward_flops(conv, (2, 5, 5)) == 2 * 27 * 25 + 2 * 75


@pytest.mark.parametrize("partition", PARTITIONS)
def test_partitions_cover_the_data_once(partition):
    labels = np.repeat(np.arange(10), 30)
    parts = fl.partition_indices(labels, 5, partition, alpha=0.5, seed=1)
    joined = np.concatenate(parts)
    assert len(parts) == 5 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(joined), np.arange(300))
    if partition == "iid":
        assert {len(p) for p in parts} == {60}
        assert all(len(np.unique(labels[p])) == 10 for p in parts)
    if partition == "sorted":
        assert all(len(np.unique(labels[p])) <= 3 for p in parts)
    again = fl.partition_indices(labels, 5, partition, alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_masks_stay_fixed_and_pruned_weights_zero(data):
    torch.manual_seed(0)
    model = new_model(TrainConfig(image_size=8), data)
    fl.prune_global(model, data, TINY, "magnitude", 0.8)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    shards = fl._shards(data, TINY)
    sizes = []
    for r in (1, 2):
        rec, traffic = fl.fedavg_round(model, shards, data, TINY, r)
        sizes.append(rec["bytes_down"])
        assert len(traffic) == TINY.nodes and all(t["bytes_sent"] > 0 for t in traffic)
        for name, m in get_masks(model).items():
            assert torch.equal(m, masks[name])
            assert (dict(model.named_parameters())[name][~m] == 0).all()
    assert sizes[0] == sizes[1]  # the mask alone fixes the encoded size


def test_simulation_is_deterministic_and_cached(data, tmp_path):
    tc = TrainConfig(image_size=8)
    a = fl.simulate(tc, TINY, "flexrel", 0.7, data=data, cache_root=tmp_path / "a")
    b = fl.simulate(tc, TINY, "flexrel", 0.7, data=data, cache_root=tmp_path / "b")
    assert pd.DataFrame(a["rounds"]).equals(pd.DataFrame(b["rounds"]))
    assert all(torch.equal(v, b["state"][k]) for k, v in a["state"].items())
    rounds = pd.DataFrame(a["rounds"])
    assert list(rounds["phase"]) == ["dense", "pruning", "pruned", "pruned"]
    assert list(rounds["eligible"]) == [False, False, True, True]
    assert (np.diff(rounds["elapsed_s"]) >= 0).all() and (np.diff(rounds["mb"]) >= 0).all()
    # time = compute + transfer each round; pruned rounds send less than the dense one
    assert np.allclose(rounds["round_s"], rounds["compute_s"] + rounds["transfer_s"])
    assert rounds["bytes_down"].iloc[2] < 0.5 * rounds["bytes_down"].iloc[0]
    assert rounds["mb"].iloc[-1] == pytest.approx((rounds["bytes_down"] + rounds["bytes_up"]).sum() / 1e6)
    mask_keys = [k for k in a["state"] if k.endswith("flexrel_mask")]
    kept = sum(int(a["state"][k].sum()) for k in mask_keys)
    total = sum(a["state"][k].numel() for k in mask_keys)
    assert kept == total - round(0.7 * total)
    cached = fl.simulate(tc, TINY, "flexrel", 0.7, data=None, cache_root=tmp_path / "a")  # from the cache
    assert cached["rounds"] == a["rounds"]


def test_other_seed_differs(data, tmp_path):
    tc = TrainConfig(image_size=8)
    a = fl.simulate(tc, TINY, "magnitude", 0.5, data=data, cache_root=tmp_path)
    b = fl.simulate(tc, FedConfig(**{**TINY.__dict__, "seed": 1}), "magnitude", 0.5, data=data, cache_root=tmp_path)
    assert not all(torch.equal(v, b["state"][k]) for k, v in a["state"].items())
