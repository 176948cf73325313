"""Masks from scores: exact pruned fraction, deterministic ties, masks only shrink, export to
``torch.nn.utils.prune`` and back, and bad amounts or scopes refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from nets import small_cnn, torch_masks
from torch import nn

from flexrel_core import (
    from_torch_prune,
    get_masks,
    load_state,
    parameter_relevance,
    prunable_count,
    prunable_layers,
    prune,
    pruning_scores,
    sparsity,
    to_torch_prune,
)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.1, 0.5, 0.813, 0.99])
def test_exact_pruned_fraction(scope, amount):
    model = small_cnn()
    prune(model, pruning_scores(model, method="magnitude"), amount, scope=scope)
    layers = prunable_layers(model)
    if scope == "global":
        n = prunable_count(model)
        assert sum(int((m.weight == 0).sum()) for m in layers.values()) == round(amount * n)
    else:
        for m in layers.values():
            assert int((m.weight == 0).sum()) == round(amount * m.weight.numel())
    assert sparsity(model)["overall"] == pytest.approx(amount, abs=1 / prunable_count(model))


def test_masks_only_shrink_and_earlier_cuts_are_kept():
    model = small_cnn()
    x = torch.randn(5, 1, 6, 6)
    first = prune(model, pruning_scores(model, x, delta=0.5), 0.5)
    # relevance of a pruned weight is not zero (it comes from its neighbours): earlier cuts must still stay cut
    second = prune(model, pruning_scores(model, x, delta=0.9), 0.8)
    for n in first:
        assert not (second[n] & ~first[n]).any()
    assert sparsity(model)["overall"] == pytest.approx(round(0.8 * prunable_count(model)) / prunable_count(model))
    with pytest.raises(ValueError, match="masks only shrink"):
        prune(model, pruning_scores(model, method="magnitude"), 0.3)


def test_all_ones_mask_changes_nothing():
    model = small_cnn()
    x = torch.randn(3, 1, 6, 6)
    before = model(x)
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.0)
    assert all(m.all() for m in masks.values())
    assert torch.equal(model(x), before)


def test_ties_break_deterministically_by_position():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    scores = {"0.weight": torch.zeros(2, 4, dtype=torch.float64)}
    masks = prune(model, scores, 0.5)
    assert masks["0.weight"].flatten().tolist() == [False] * 4 + [True] * 4


def test_torch_prune_export_round_trip_and_checkpoint():
    model = small_cnn()
    x = torch.randn(3, 1, 6, 6)
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.6)
    out = model(x)
    state = copy.deepcopy(model.state_dict())
    to_torch_prune(model)
    assert all(torch.equal(torch_masks(model)[n], masks[n]) for n in masks)
    torch.testing.assert_close(model(x), out)
    with pytest.raises(ValueError, match="from_torch_prune"):
        parameter_relevance(model, x)
    from_torch_prune(model)
    assert all(torch.equal(get_masks(model)[n], masks[n]) for n in masks)
    fresh = small_cnn()
    load_state(fresh, state)
    assert all(torch.equal(get_masks(fresh)[n], masks[n]) for n in masks)
    torch.testing.assert_close(fresh(x), out)


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan])
def test_amount_outside_range(amount):
    model = small_cnn()
    with pytest.raises(ValueError, match=r"pruning factor must be in \[0, 1\)"):
        prune(model, pruning_scores(model, method="magnitude"), amount)


def test_unknown_scope():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"scope must be one of \('global', 'layer'\)"):
        prune(model, pruning_scores(model, method="magnitude"), 0.5, scope="channel")
