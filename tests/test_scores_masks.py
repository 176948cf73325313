"""Scores and masks: delta = 0 is magnitude pruning exactly, invariants of pruning (DESIGN.md items 5-8)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

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
from flexrel_core.masks import apply_masks, mask_gradients
from flexrel_core.scores import normalize_scores
from flexrel_core.training import train


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)
    )


def torch_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight_mask.bool() for n, m in model.named_modules() if hasattr(m, "weight_mask")}


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


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_masked_weights_stay_zero_through_fine_tuning(optimizer):
    model = small_cnn()
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,)))
    train(model, data, epochs=1, optimizer=optimizer, weight_decay=0.1, lr=0.05, device="cpu")
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.7)
    kept_before = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    train(model, data, epochs=3, optimizer=optimizer, weight_decay=0.1, lr=0.05, device="cpu")
    for n, m in prunable_layers(model).items():
        assert (m.weight[~masks[n]] == 0).all()
        assert not torch.equal(m.weight[masks[n]], kept_before[n][masks[n]])  # the kept ones did train


def test_user_loop_with_stale_adam_state_keeps_zeros_via_mask_helpers():
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 5, (16,))
    for _ in range(3):  # dense steps build up Adam moments for every weight
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        mask_gradients(model)
        opt.step()
        apply_masks(model)
    assert all((m.weight[~masks[n]] == 0).all() for n, m in prunable_layers(model).items())


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
