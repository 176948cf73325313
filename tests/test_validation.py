"""Bad input is refused with a message that says what was expected (issue: foundation, test 5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flexrel_core import parameter_relevance, prune, pruning_scores
from flexrel_core.data import load_dataset
from flexrel_core.models import build_model
from flexrel_core.paths import check_profile


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


@pytest.mark.parametrize("delta", [-0.1, 1.01, math.nan, math.inf])
def test_delta_outside_unit_interval(delta):
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\]"):
        pruning_scores(net(), torch.randn(2, 1, 6, 6), delta=delta)


def test_delta_of_wrong_type():
    with pytest.raises(TypeError, match="delta must be a number"):
        pruning_scores(net(), torch.randn(2, 1, 6, 6), delta="0.5")


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan])
def test_amount_outside_range(amount):
    model = net()
    with pytest.raises(ValueError, match=r"pruning factor must be in \[0, 1\)"):
        prune(model, pruning_scores(model, method="magnitude"), amount)


def test_empty_and_misshapen_inputs():
    with pytest.raises(ValueError, match="non-empty batch"):
        parameter_relevance(net(), torch.zeros(0, 1, 6, 6))
    with pytest.raises(ValueError, match=r"expecting \(n, 1, H, W\)"):
        parameter_relevance(net(), torch.randn(2, 3, 6, 6))
    with pytest.raises(ValueError, match="do not fit the model"):
        parameter_relevance(net(), torch.randn(2, 1, 9, 9))
    with pytest.raises(TypeError, match="torch.Tensor"):
        parameter_relevance(net(), [[1.0]])


def test_model_without_prunable_layers():
    with pytest.raises(ValueError, match=r"no prunable layers: expected at least one nn.Linear or nn.Conv2d"):
        parameter_relevance(nn.Sequential(nn.ReLU()), torch.randn(2, 3))


@pytest.mark.parametrize("layer", [nn.Conv1d(1, 2, 3), nn.LSTM(3, 2), nn.Embedding(5, 3)])
def test_unsupported_layer_types(layer):
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=f"unsupported layer type {type(layer).__name__}"):
        pruning_scores(model, method="magnitude")


def test_non_zero_padding_mode_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(2 * 36, 2))
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        pruning_scores(model, method="magnitude")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="random"), "unknown method 'random'"),
        (dict(normalize="batch"), "normalize must be one of"),
        (dict(composite="nonsense"), "unknown composite 'nonsense'"),
        (dict(aggregate="median"), "unknown aggregate 'median'"),
    ],
)
def test_unknown_names(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pruning_scores(net(), torch.randn(2, 1, 6, 6), **kwargs)


def test_unknown_scope_dataset_model_profile():
    model = net()
    with pytest.raises(ValueError, match=r"scope must be one of \('global', 'layer'\)"):
        prune(model, pruning_scores(model, method="magnitude"), 0.5, scope="channel")
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        check_profile("fast")


def test_scores_that_do_not_match_the_model():
    model = net()
    with pytest.raises(ValueError, match="missing"):
        prune(model, {"0.weight": torch.zeros(2, 1, 3, 3)}, 0.5)
    bad = pruning_scores(model, method="magnitude")
    bad["0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="has shape"):
        prune(model, bad, 0.5)
    with pytest.raises(ValueError, match="needs inference `inputs`"):
        pruning_scores(model, delta=0.5)


def test_targets_out_of_range():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        parameter_relevance(net(), torch.randn(2, 1, 6, 6), torch.tensor([0, 7]))
