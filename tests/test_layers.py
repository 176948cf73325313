"""Which layers FlexRel prunes, and the refusal of models and layers it cannot handle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flexrel_core import parameter_relevance, prunable_count, prunable_layers, prune, pruning_scores


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_prunable_layers_are_linear_and_conv_weights_in_model_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert list(prunable_layers(model)) == ["0.weight", "4.weight"]
    assert prunable_count(model) == 2 * 9 + 32 * 3  # biases and BatchNorm are never pruned


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


def test_scores_that_do_not_match_the_model():
    model = net()
    with pytest.raises(ValueError, match="missing"):
        prune(model, {"0.weight": torch.zeros(2, 1, 3, 3)}, 0.5)
    bad = pruning_scores(model, method="magnitude")
    bad["0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="has shape"):
        prune(model, bad, 0.5)
    bad["0.weight"] = torch.full((2, 1, 3, 3), float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        prune(model, bad, 0.5)
