"""Masks from scores: exact pruned fraction, deterministic ties, masks only shrink, export to
``torch.nn.utils.prune`` and back, and bad amounts or scopes refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from nets import small_cnn, torch_masks
from torch import nn

import flexrel_core.masks as masks_module
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


def test_functions_that_only_read_weights_accept_a_torch_pruned_model():
    """After ``to_torch_prune``: sparsity, masks and the weight count read weight_orig * weight_mask
    (even after an optimiser step, before the next forward refreshes ``weight``); whatever propagates
    relevance or writes masks still asks for ``from_torch_prune``."""
    model = small_cnn()
    masks = prune(model, pruning_scores(model, method="magnitude"), 0.7)
    before, n = sparsity(model), prunable_count(model)
    to_torch_prune(model)
    to_torch_prune(model)  # exported layers are left as they are
    assert sparsity(model) == before and prunable_count(model) == n
    assert all(torch.equal(get_masks(model)[k], masks[k]) for k in masks)
    conv = model[0]
    with torch.no_grad():
        conv.weight_orig[conv.weight_mask.bool()] = 0.0  # every kept weight of the first layer becomes zero
    layer = sparsity(model)["layers"]["0.weight"]
    assert layer == 1.0 and sparsity(model)["overall"] > before["overall"]
    for call in (
        lambda: parameter_relevance(model, torch.randn(2, 1, 6, 6)),
        lambda: prune(model, pruning_scores(model, method="magnitude"), 0.8),
        lambda: pruning_scores(model, method="magnitude"),
    ):
        with pytest.raises(ValueError, match=r"layer '0' carries a torch.nn.utils.prune.*from_torch_prune\(model\)"):
            call()


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan])
def test_amount_outside_range(amount):
    model = small_cnn()
    with pytest.raises(ValueError, match=r"pruning factor must be in \[0, 1\)"):
        prune(model, pruning_scores(model, method="magnitude"), amount)


def test_unknown_scope():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"scope must be one of \('global', 'layer', 'output'\)"):
        prune(model, pruning_scores(model, method="magnitude"), 0.5, scope="channel")


def per_row_reference(scores: torch.Tensor, kept: torch.Tensor, amount: float) -> torch.Tensor:
    """Wanda's grouping computed naively, row by row: the kept mask of each output row after removing
    its pruned weights and then its lowest (score, position) pairs, round(amount * row length) in all."""
    rows = scores.reshape(scores.shape[0], -1).double().tolist()
    alive = kept.reshape(len(rows), -1).tolist()
    out = []
    for row, live in zip(rows, alive, strict=True):
        k = round(amount * len(row))
        order = sorted(range(len(row)), key=lambda i: (live[i], row[i] if live[i] else 0.0, i))
        removed = set(order[:k])
        out.append([i not in removed for i in range(len(row))])
    return torch.tensor(out).view_as(scores)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64])
def test_output_scope_removes_the_same_fraction_of_every_output_row(dtype, path):
    """``scope="output"`` (Wanda's comparison group: each row of a Linear weight, each output
    channel of a Conv2d) equals a row-by-row reference, with ties and an earlier cut."""
    gen = torch.Generator().manual_seed(3)
    for case in range(12):
        model = mixed_model()
        for amount in sorted(torch.rand(1 + case % 2, generator=gen).tolist()):
            scores = tied_scores(model, gen, levels=1 + case % 5, dtype=torch.float64)
            scores = {n: (s * 4).to(dtype) for n, s in scores.items()}
            old = get_masks(model)
            masks = prune(model, scores, amount, scope="output")
            for name, m in prunable_layers(model).items():
                assert torch.equal(masks[name], per_row_reference(scores[name], old[name], amount)), (case, name)
                pruned_per_row = (~masks[name]).reshape(m.weight.shape[0], -1).sum(1)
                assert (pruned_per_row == round(amount * m.weight[0].numel())).all()


def test_output_scope_refuses_to_revive_a_row():
    model = mixed_model()
    prune(model, pruning_scores(model, method="magnitude"), 0.9)  # global: some rows lose everything
    with pytest.raises(ValueError, match=r"has a row with \d+ of \d+ weights pruned"):
        prune(model, pruning_scores(model, method="magnitude"), 0.5, scope="output")


# --------------------------------------------------------------------------- selection against a full sort
def sorted_reference(model: nn.Module, scores: dict[str, torch.Tensor], amount: float, scope: str) -> dict:
    """The masks ``prune`` gives, computed naively: pruned weights set to -inf, every score in
    float64, one full stable sort per group, the first round(amount * N) removed."""
    old = get_masks(model)
    groups = [list(old)] if scope == "global" else [[name] for name in old]
    out = {}
    for names in groups:
        flat = torch.cat([torch.where(old[n].flatten(), scores[n].flatten().double(), -math.inf) for n in names])
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[: round(amount * flat.numel())]] = False
        for n, part in zip(names, torch.split(keep, [old[n].numel() for n in names]), strict=True):
            out[n] = part.view_as(old[n])
    return out


@pytest.fixture(params=["numpy", "torch"])
def path(request, monkeypatch):
    """Selection through numpy (CPU tensors) or through torch operations (what runs on a GPU)."""
    if request.param == "torch":
        monkeypatch.setattr(masks_module, "host_array", lambda t: None)
    return request.param


def mixed_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 7), nn.Linear(7, 5, bias=False))


def tied_scores(model: nn.Module, gen: torch.Generator, levels: int, dtype: torch.dtype) -> dict:
    """Scores drawn from ``levels`` values (many ties), with +0.0 and -0.0 both present."""
    out = {}
    for n, m in prunable_layers(model).items():
        s = torch.randint(-levels // 2, levels // 2 + 1, m.weight.shape, generator=gen).to(dtype) / 4
        s[torch.rand(m.weight.shape, generator=gen) < 0.2] = -0.0
        out[n] = s
    return out


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.int64])
def test_selection_equals_a_stable_sort_with_ties_and_earlier_cuts(scope, dtype, path):
    gen = torch.Generator().manual_seed(1)
    for case in range(40):
        model = mixed_model()
        steps = sorted(torch.rand(1 + case % 3, generator=gen).tolist())  # one to three successive cuts
        for amount in steps:
            scores = tied_scores(model, gen, levels=1 + case % 7, dtype=dtype)
            if dtype == torch.int64:
                scores = {n: (s * 4).long() for n, s in scores.items()}
            expected = sorted_reference(model, scores, amount, scope)
            masks = prune(model, scores, amount, scope=scope)
            assert all(torch.equal(masks[n], expected[n]) for n in expected), (case, amount)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("amount", [0.0, 0.05, 0.5, 0.9, 0.999])
def test_selection_past_the_sampling_threshold(dtype, amount, path):
    """Enough weights for the sampled bracket (more than ``SAMPLE``), with ties and a pre-pruned layer."""
    model = nn.Sequential(nn.Linear(512, 600), nn.Linear(600, 10))
    gen = torch.Generator().manual_seed(2)
    assert prunable_count(model) > masks_module.SAMPLE
    prune(model, {n: torch.rand(m.weight.shape, generator=gen) for n, m in prunable_layers(model).items()}, 0.0)
    prune(model, tied_scores(model, gen, levels=5000, dtype=dtype), amount / 2)
    scores = tied_scores(model, gen, levels=20000, dtype=dtype)
    expected = sorted_reference(model, scores, amount, "global")
    masks = prune(model, scores, amount)
    assert all(torch.equal(masks[n], expected[n]) for n in expected)


def test_a_missed_bracket_changes_the_time_not_the_masks(monkeypatch, path):
    model = nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 10))
    gen = torch.Generator().manual_seed(3)
    scores = tied_scores(model, gen, levels=30, dtype=torch.float64)
    expected = sorted_reference(model, scores, 0.6, "global")
    for bracket in [(-math.inf, -100.0), (100.0, math.inf), (0.5, 0.5)]:
        monkeypatch.setattr(masks_module, "_bracket", lambda *args, b=bracket: b)
        masks = prune(copy.deepcopy(model), scores, 0.6)
        assert all(torch.equal(masks[n], expected[n]) for n in expected), bracket


def test_float32_scores_are_compared_in_float32(monkeypatch):
    """Selection in the scores' own dtype gives the float64 masks (a float widens exactly, so no two
    scores merge or swap order) and never makes a float64 copy of them: float32 scores reach the
    numpy selection (CPU) as float32, and the torch path (a GPU's) widens only the bounded sample
    that brackets the threshold, never the scores."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.float64 = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    self.float64 = max(self.float64, t.numel())
            return out

    model = nn.Sequential(nn.Linear(512, 600), nn.Linear(600, 10))
    scores = tied_scores(model, torch.Generator().manual_seed(4), levels=100000, dtype=torch.float32)
    expected = sorted_reference(model, scores, 0.7, "global")
    seen, select = [], masks_module._select
    monkeypatch.setattr(
        masks_module, "_select", lambda flat, *a: seen.extend(x.dtype for x in flat) or select(flat, *a)
    )
    masks = prune(copy.deepcopy(model), scores, 0.7)
    assert all(torch.equal(masks[n], expected[n]) for n in expected)
    assert seen and all(str(d) == "float32" for d in seen)
    monkeypatch.setattr(masks_module, "host_array", lambda t: None)
    with Record() as record:
        masks = prune(model, scores, 0.7)
    assert all(torch.equal(masks[n], expected[n]) for n in expected)
    assert 0 < record.float64 <= masks_module.SAMPLE < prunable_count(model)  # float64: the sample's values only
