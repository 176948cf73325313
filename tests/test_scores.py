"""FlexRel scores s = (1 - δ)·M_norm + δ·R_norm: δ = 0 is magnitude pruning exactly (against
``torch.nn.utils.prune``), δ = 1 ranks by relevance alone, the formula and its range, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from nets import small_cnn, torch_masks
from torch import nn
from torch.nn.utils import prune as torch_prune

from flexrel_core import parameter_relevance, prunable_layers, prune, pruning_scores
from flexrel_core.scores import METHODS, method_delta, normalize_scores, shuffle_within_layers


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.77, 0.95])
def test_delta0_layer_scope_equals_l1_unstructured(amount):
    model = small_cnn()
    reference = copy.deepcopy(model)
    for m in prunable_layers(reference).values():
        torch_prune.l1_unstructured(m, "weight", amount=amount)
    x = torch.randn(4, 1, 6, 6)
    masks = prune(model, pruning_scores(model, x, method="flexrel", delta=0.0), amount, scope="layer")
    expected = torch_masks(reference)
    assert all(torch.equal(masks[n], expected[n]) for n in masks)


@pytest.mark.parametrize("amount", [0.2, 0.6, 0.9])
def test_magnitude_global_equals_global_unstructured(amount):
    model = small_cnn()
    reference = copy.deepcopy(model)
    torch_prune.global_unstructured(
        [(m, "weight") for m in prunable_layers(reference).values()],
        pruning_method=torch_prune.L1Unstructured,
        amount=amount,
    )
    masks = prune(model, pruning_scores(model, method="magnitude", normalize="global"), amount, scope="global")
    expected = torch_masks(reference)
    assert all(torch.equal(masks[n], expected[n]) for n in masks)


def test_delta1_ranks_by_relevance_alone_and_works_as_torch_importance_scores():
    model = small_cnn()
    x = torch.randn(6, 1, 6, 6)
    rel = parameter_relevance(model, x)
    scores = pruning_scores(model, method="relevance", relevance=rel, normalize="global")
    torch.testing.assert_close(scores, normalize_scores(rel, "global"))
    reference = copy.deepcopy(model)
    layers = prunable_layers(reference)
    torch_prune.global_unstructured(
        [(m, "weight") for m in layers.values()],
        pruning_method=torch_prune.L1Unstructured,
        importance_scores={(layers[n], "weight"): rel[n] for n in layers},
        amount=0.6,
    )
    masks = prune(model, scores, 0.6)
    expected = torch_masks(reference)
    assert all(torch.equal(masks[n], expected[n]) for n in masks)


def test_flexrel_score_formula_and_range():
    model = small_cnn()
    rel = parameter_relevance(model, torch.randn(3, 1, 6, 6))
    m_norm = normalize_scores({n: m.weight.detach().abs() for n, m in prunable_layers(model).items()})
    r_norm = normalize_scores(rel)
    s = pruning_scores(model, relevance=rel, delta=0.3)
    for n in s:
        torch.testing.assert_close(s[n], 0.7 * m_norm[n] + 0.3 * r_norm[n])
        assert s[n].min() >= 0 and s[n].max() <= 1


def test_degenerate_scores_never_nan():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    nn.init.constant_(model[0].weight, 0.5)  # constant layer: magnitude carries no ranking
    zero_rel = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in prunable_layers(model).items()}
    for normalize in ("layer", "global"):
        s = pruning_scores(model, relevance=zero_rel, delta=0.5, normalize=normalize)
        assert all(torch.isfinite(t).all() for t in s.values())
        prune(copy.deepcopy(model), s, 0.5)
    s = pruning_scores(model, relevance=zero_rel, delta=0.5, normalize="layer")
    assert torch.equal(s["0.weight"], torch.zeros(2, 3, dtype=torch.float64))


def test_method_delta_is_the_one_rule():
    assert [method_delta(m, 0.3) for m in METHODS] == [0.0, 1.0, 0.3]
    with pytest.raises(ValueError, match="unknown method"):
        method_delta("snip", 0.5)
    with pytest.raises(ValueError, match="'random' is not a blend of magnitude and relevance"):
        method_delta("random", 0.5)


@pytest.mark.parametrize("delta", [-0.1, 1.01, math.nan, math.inf])
def test_delta_outside_unit_interval(delta):
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\]"):
        pruning_scores(small_cnn(), torch.randn(2, 1, 6, 6), delta=delta)


def test_delta_of_wrong_type():
    with pytest.raises(TypeError, match="delta must be a number"):
        pruning_scores(small_cnn(), torch.randn(2, 1, 6, 6), delta="0.5")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="snip"), "unknown method 'snip'"),
        (dict(normalize="batch"), "normalize must be one of"),
        (dict(composite="nonsense"), "unknown composite 'nonsense'"),
        (dict(aggregate="median"), "unknown aggregate 'median'"),
    ],
)
def test_unknown_names(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pruning_scores(small_cnn(), torch.randn(2, 1, 6, 6), **kwargs)


def test_relevance_needed_for_delta_above_zero():
    with pytest.raises(ValueError, match="needs inference `inputs`"):
        pruning_scores(small_cnn(), delta=0.5)


def test_shuffled_relevance_keeps_each_layers_values_and_changes_the_ranking():
    model = small_cnn()
    rel = parameter_relevance(model, torch.randn(6, 1, 6, 6))
    shuffled = shuffle_within_layers(rel, seed=3)
    for name, r in rel.items():
        s = shuffled[name]
        assert s.shape == r.shape and s.dtype == r.dtype
        assert torch.equal(torch.sort(s.flatten()).values, torch.sort(r.flatten()).values)  # same multiset
        assert not torch.equal(s, r)  # another arrangement
    assert all(
        torch.equal(a, b) for a, b in zip(shuffled.values(), shuffle_within_layers(rel, 3).values(), strict=True)
    )
    # with one global threshold, the cut per layer moves only as much as ties at the threshold allow
    kept = {}
    for name, scores in (("plain", rel), ("shuffled", shuffled)):
        masks = prune(copy.deepcopy(model), normalize_scores(scores), 0.6)
        kept[name] = {n: int(m.sum()) for n, m in masks.items()}
    assert kept["plain"] == kept["shuffled"]
