"""Figure 3's cooperative-learning simulator: cost model, shards, fixed masks, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from flexrel_core.encoding import encode_sparse, information_bound_bits
from flexrel_core.masks import get_masks, load_state, prune
from flexrel_core.paper import federated as fl
from flexrel_core.scores import pruning_scores
from flexrel_core.training import evaluate
from flexrel_core.workbook.config import PARTITIONS, FedConfig, PruneConfig, TrainConfig
from flexrel_core.workbook.pipeline import prepare

TINY = FedConfig(nodes=2, rounds=2, local_steps=3, local_batch_size=32)
PCFG = PruneConfig(inference_samples=32, fine_tune_epochs=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A briefly trained digits model, its relevance and its data (cached in a module folder)."""
    return prepare(TrainConfig(image_size=8, epochs=2), PCFG, cache_root=tmp_path_factory.mktemp("fed"), device="cpu")


def test_cost_model_arithmetic():
    assert fl.compute_time_s(1e6, 200, 1e9) == pytest.approx(3 * 1e6 * 200 / 1e9)
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
    base = fl.round_time_s([fl.compute_time_s(1e6, 200, cfg.node_flops)] * 2, [10_000] * 2, [10_000] * 2, cfg)
    more_bytes = fl.round_time_s([base["compute_s"]] * 2, [20_000] * 2, [10_000] * 2, cfg)
    more_flops = fl.round_time_s([fl.compute_time_s(2e6, 200, cfg.node_flops)] * 2, [10_000] * 2, [10_000] * 2, cfg)
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


def test_local_samples_follow_steps_or_epochs():
    assert fl.local_samples(600, FedConfig(local_steps=4, local_batch_size=32)) == 128
    assert fl.local_samples(600, FedConfig(local_steps=None, local_epochs=2)) == 1200
    assert fl.local_samples(50, FedConfig(local_steps=4, local_batch_size=32)) == 50  # a small shard, one pass


def test_masks_stay_fixed_and_pruned_weights_zero(setup):
    model = setup.fresh_model()
    fl.prune_for(setup, model, "magnitude", 0.8, PCFG, 0.5)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    shards = fl.shards_of(setup, TINY)
    sizes = []
    for r in (1, 2):
        rec, traffic = fl.fedavg_round(model, shards, setup.data.test, TINY, r, seed=0)
        sizes.append(rec["bytes_down"])
        assert len(traffic) == TINY.nodes and all(t["bytes_sent"] > 0 for t in traffic)
        for name, m in get_masks(model).items():
            assert torch.equal(m, masks[name])
            assert (dict(model.named_parameters())[name][~m] == 0).all()
    assert sizes[0] == sizes[1]  # the mask alone fixes the encoded size


@pytest.mark.parametrize("p", [0.5, 0.9, 0.98])
def test_equal_pruning_factors_send_equal_values_and_differ_only_by_mask_entropy(setup, p):
    """At equal p every technique sends the same number of values; the messages differ only through the
    information in their masks (log2 C(n, k) per layer: a technique that keeps whole layers has cheaper
    masks), which the coder follows within 2 % (plus a few bytes of framing per layer)."""
    sizes, bounds, kept = {}, {}, set()
    for technique in ("magnitude", "flexrel", "relevance"):
        model = setup.fresh_model()
        fl.prune_for(setup, model, technique, p, PCFG, 0.5)
        kept.add(sum(int(m.sum()) for m in get_masks(model).values()))
        sizes[technique] = len(encode_sparse(model))
        bounds[technique] = information_bound_bits(model) / 8
        framing = 8 * len(get_masks(model))  # per layer: mode byte, Rice parameter, counts, byte rounding
        assert bounds[technique] <= sizes[technique] <= 1.02 * bounds[technique] + framing
    assert len(kept) == 1  # the same number of values travels
    for a, b in (("flexrel", "magnitude"), ("relevance", "magnitude")):
        assert abs((sizes[a] - sizes[b]) - (bounds[a] - bounds[b])) <= 0.02 * sizes[b] + framing


def test_simulation_is_deterministic_and_cached(setup, tmp_path):
    a = fl.simulate(setup, PCFG, TINY, "flexrel", 0.7, delta=0.5, cache_root=tmp_path / "a")
    b = fl.simulate(setup, PCFG, TINY, "flexrel", 0.7, delta=0.5, cache_root=tmp_path / "b")
    assert pd.DataFrame(a["rounds"]).equals(pd.DataFrame(b["rounds"]))
    assert all(torch.equal(v, b["state"][k]) for k, v in a["state"].items())
    rounds = pd.DataFrame(a["rounds"])
    assert list(rounds["round"]) == [0, 1, 2] and list(rounds["eligible"]) == [False, True, True]
    assert rounds["mb"].iloc[0] == 0 and rounds["elapsed_s"].iloc[0] == 0  # pruned at the server: nothing sent
    assert (np.diff(rounds["elapsed_s"]) > 0).all() and (np.diff(rounds["mb"]) > 0).all()
    assert np.allclose(rounds["round_s"], rounds["compute_s"] + rounds["transfer_s"])
    assert rounds["mb"].iloc[-1] == pytest.approx((rounds["bytes_down"] + rounds["bytes_up"]).sum() / 1e6)
    dense = pd.DataFrame(fl.simulate(setup, PCFG, TINY, "dense", 0.0, delta=0.5, cache_root=tmp_path / "a")["rounds"])
    assert rounds["bytes_down"].iloc[1] < 0.5 * dense["bytes_down"].iloc[1]  # a pruned model travels lighter
    mask_keys = [k for k in a["state"] if k.endswith("flexrel_mask")]
    kept = sum(int(a["state"][k].sum()) for k in mask_keys)
    total = sum(a["state"][k].numel() for k in mask_keys)
    assert kept == total - round(0.7 * total)
    again = fl.simulate(setup, PCFG, TINY, "flexrel", 0.7, delta=0.5, cache_root=tmp_path / "a")  # from the cache
    assert again["rounds"] == a["rounds"]


def test_rounds_record_validation_and_test_accuracy_of_the_global_model(setup, tmp_path):
    """Each round's accuracies are the global model's on the validation and the test split (checked on the
    final state, evaluated here), and the first rounds of a run do not depend on how many rounds follow."""
    run = fl.simulate(setup, PCFG, TINY, "magnitude", 0.6, delta=0.5, cache_root=tmp_path)
    final = load_state(setup.fresh_model(), run["state"])
    last = run["rounds"][-1]
    assert last["val_accuracy"] == evaluate(final, setup.data.val, device="cpu")
    assert last["accuracy"] == evaluate(final, setup.data.test, device="cpu")
    assert run["rounds"][0]["val_accuracy"] != last["val_accuracy"] or run["rounds"][0]["accuracy"] != last["accuracy"]
    short = fl.simulate(
        setup, PCFG, dataclasses.replace(TINY, rounds=1), "magnitude", 0.6, delta=0.5, cache_root=tmp_path
    )
    for a, b in zip(short["rounds"], run["rounds"][:2], strict=True):
        assert a == b


def test_unknown_technique_refused(setup):
    with pytest.raises(ValueError, match="technique must be one of"):
        fl.prune_for(setup, setup.fresh_model(), "random", 0.5, PCFG, 0.5)


def test_message_bytes_are_the_encoders_length_with_masks_coded_once(setup, monkeypatch):
    seen = []
    real = fl.encoded_size

    def spy(model, **kwargs):
        n = real(model, **kwargs)
        seen.append((n, len(encode_sparse(model))))
        return n

    monkeypatch.setattr(fl, "encoded_size", spy)
    model = setup.fresh_model()
    fl.prune_for(setup, model, "flexrel", 0.9, PCFG, 0.5)
    sizes = fl.MaskCodeCache()
    rec, traffic = fl.fedavg_round(model, fl.shards_of(setup, TINY), setup.data.test, TINY, 1, seed=0, sizes=sizes)
    assert len(seen) == 2 * TINY.nodes and all(a == b for a, b in seen)  # every message, down and up
    assert rec["bytes_down"] + rec["bytes_up"] == sum(a for a, _ in seen)
    assert sizes.computed == len(get_masks(model))  # each layer's mask coded once, then reused


def test_half_precision_messages_travel_as_decoded_float16(setup):
    model = setup.fresh_model()
    fl.prune_for(setup, model, "magnitude", 0.5, PCFG, 0.5)
    received, nbytes = fl.send(model, FedConfig(half=True), fl.MaskCodeCache())
    assert nbytes == len(encode_sparse(model, half=True))
    for (name, a), b in zip(model.state_dict().items(), received.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert torch.equal(b, a.half().float()), name


def test_running_average_is_the_weighted_mean_of_the_nodes_states():
    """FedAvg accumulated node by node against a plain weighted mean of the state dicts, in float64 by hand;
    integer buffers come from the first node and pruned weights stay zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    prune(model, pruning_scores(model, method="magnitude"), 0.5)
    model.register_buffer("steps", torch.tensor(0))
    states, weights = [], [30.0, 10.0, 60.0]
    for i in range(len(weights)):
        s = {k: v.clone() for k, v in model.state_dict().items()}
        for k, v in s.items():
            if v.is_floating_point() and not k.endswith("flexrel_mask"):
                s[k] = v + torch.randn_like(v)
        s["steps"] = torch.tensor(7 + i)
        states.append(s)
    avg = fl.RunningAverage(sum(weights))
    for s, w in zip(states, weights, strict=True):
        avg.add(s, w)
    avg.apply(model)
    masks = dict(get_masks(model))
    for name, got in model.state_dict().items():
        if name.endswith("flexrel_mask"):
            continue
        if name == "steps":
            assert int(got) == 7
            continue
        want = sum(s[name].double() * w for s, w in zip(states, weights, strict=True)) / sum(weights)
        if name in masks:
            want = want * masks[name].double()
        assert torch.allclose(got.double(), want, atol=1e-6), name
    with pytest.raises(ValueError, match="no state"):
        fl.RunningAverage(1.0).apply(model)


def test_test_accuracy_only_where_a_target_is_first_reached_and_runs_stop_when_all_are(setup, tmp_path):
    """With test_every_round off, validation is measured every round and test accuracy only at round 0 and at
    the rounds where validation first meets a target; the test numbers there are those of the every-round run.
    With stop_when_reached, the run ends at the round where the last target is met."""
    full = pd.DataFrame(fl.simulate(setup, PCFG, TINY, "dense", 0.0, delta=0.5, cache_root=tmp_path)["rounds"])
    val = full.loc[full["round"] >= 1, "val_accuracy"].tolist()
    targets = [min(val) - 0.01, max(val)]  # met at round 1, and at the best round
    cheap = dataclasses.replace(TINY, test_every_round=False)
    run = pd.DataFrame(
        fl.simulate(setup, PCFG, cheap, "dense", 0.0, delta=0.5, targets=targets, cache_root=tmp_path)["rounds"]
    )
    assert run["val_accuracy"].tolist() == full["val_accuracy"].tolist()
    best = 1 + val.index(max(val))
    tested = set(run.loc[run["accuracy"].notna(), "round"])
    assert tested == {0, 1, best}
    assert run.loc[run["accuracy"].notna(), "accuracy"].tolist() == full.loc[list(tested), "accuracy"].tolist()
    stop = dataclasses.replace(cheap, stop_when_reached=True)
    short = pd.DataFrame(
        fl.simulate(setup, PCFG, stop, "dense", 0.0, delta=0.5, targets=[targets[0]], cache_root=tmp_path)["rounds"]
    )
    assert short["round"].tolist() == [0, 1]
    never = fl.simulate(setup, PCFG, stop, "dense", 0.0, delta=0.5, targets=[1.01], cache_root=tmp_path)
    assert len(never["rounds"]) == TINY.rounds + 1 and np.isnan(never["rounds"][-1]["accuracy"])


def test_the_small_training_share_is_class_balanced_and_of_its_size(setup):
    """The share the learning scenario's starting model trains on: its size, every class in proportion to the
    training split (within one image), a seeded draw; without train_samples, the whole split."""
    from flexrel_core.data import class_counts
    from flexrel_core.workbook.pipeline import train_share

    cfg = TrainConfig(image_size=8, epochs=2, train_samples=100)
    share = train_share(setup.data, cfg)
    assert len(share) == 100
    counts = np.array(class_counts(share, 10))
    full = np.array(class_counts(setup.data.train, 10))
    assert (np.abs(counts - 100 * full / full.sum()) < 1 + 1e-9).all() and (counts > 0).all()
    assert list(share.indices) == list(train_share(setup.data, cfg).indices)  # seeded
    other = train_share(setup.data, dataclasses.replace(cfg, seed=1))
    assert list(share.indices) != list(other.indices)
    assert train_share(setup.data, TrainConfig(image_size=8)) is setup.data.train
    with pytest.raises(ValueError, match="train_samples"):
        TrainConfig(train_samples=0)
    from flexrel_core.workbook.config import canonical
    from flexrel_core.workbook.pipeline import model_id

    # the share names its own model (and so its relevance and runs); the whole split keeps its old name
    assert model_id(cfg) != model_id(dataclasses.replace(cfg, train_samples=None))
    assert "train_samples" not in canonical(TrainConfig(image_size=8))
