"""Which graphs count as a plain chain of layers, and the refusal of the others by both relevance engines."""

from __future__ import annotations

import pytest
import torch
import torchvision
from nets import Reused
from torch import nn

from flexrel_core import build_model, lrp_backward, parameter_relevance
from flexrel_core.graph import batchnorm_merges, chain_steps, is_chain, reused_modules


class Attention(nn.Module):
    """Single-head self-attention from plain nn.Linear layers: a product of two activations."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)
        return self.head((weights @ self.v(x)).mean(1))


class ViewChain(nn.Module):
    """A chain written with a functional ReLU and ``x.view(x.size(0), -1)``, as older models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


class Registered(nn.Module):
    """Runs conv_b -> bn -> conv_a but registers conv_a, conv_b, bn: zennit would merge bn into conv_b by
    luck here, and Flat would go to conv_a, which does not run first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 2, 3, padding=1)
        self.conv_b = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv_a(self.bn(self.conv_b(x))), 1))


class MisplacedBatchNorm(nn.Module):
    """Registers conv_a then bn, but runs bn after conv_b: zennit would fold bn into conv_a."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv_b = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.conv_b(torch.relu(self.conv_a(x)))), 1))


@pytest.mark.parametrize(
    "model",
    [
        build_model("digits_cnn"),
        build_model("vgg_small", in_channels=3, image_size=32),
        build_model("vgg_small", in_channels=1, image_size=28, batch_norm=True),
        torchvision.models.vgg16(weights=None),
        torchvision.models.vgg16_bn(weights=None),
        nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
    ],
    ids=["digits_cnn", "vgg_small", "vgg_small_bn", "vgg16", "vgg16_bn", "sequential"],
)
def test_workbook_models_are_chains_of_their_modules_in_order(model):
    """Every leaf module runs once, in the order it is registered (torchvision adds torch.flatten)."""
    steps = chain_steps(model)
    assert is_chain(model)
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert [s.name for s in steps if s.module is not None] == leaves
    assert all(s.module is not None or s.name == "flatten" for s in steps)


def test_functional_calls_and_shape_queries_keep_a_chain():
    assert [s.name for s in chain_steps(ViewChain())] == ["conv", "relu", "view", "fc"]


def test_batchnorm_merges_follow_zennit():
    model = build_model("vgg_small", batch_norm=True, image_size=28)
    merges = batchnorm_merges(model)
    assert merges == {f"features.{i + 1}": f"features.{i}" for i in (0, 3, 7, 10, 14, 17)}


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
def test_resnet18_is_refused_by_every_engine(engine):
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    with pytest.raises(ValueError, match=r"ResNet is not a plain chain.*maxpool feeds 2 operations.*supported are"):
        parameter_relevance(model, torch.randn(2, 3, 32, 32), engine=engine)


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
def test_attention_from_linear_layers_is_refused(engine):
    with pytest.raises(ValueError, match=r"Attention is not a plain chain.*feeds 3 operations \(q, k, v\).*attention"):
        parameter_relevance(Attention(), torch.randn(2, 5, 4), engine=engine)


def test_lrp_backward_refuses_non_chains_too():
    with pytest.raises(ValueError, match="not a plain chain"):
        lrp_backward(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "model,match",
    [
        (Twice(), r"modules \['fc'\] are called more than once \(shared weights\).*give each call its own module"),
        (
            Registered(),
            "first layer when run is conv_b but conv_a is registered first.*define conv_b first in __init__",
        ),
        (
            MisplacedBatchNorm(),
            "BatchNorm bn runs after conv_b but is registered right after conv_a.*define each BatchNorm in __init__",
        ),
        (
            nn.Sequential(*[nn.Linear(4, 4), bn := nn.BatchNorm1d(4, affine=False), nn.Linear(4, 4), bn]),
            r"modules \['1'\] are called more than once \(shared buffers\)",
        ),
    ],
)
def test_chains_zennit_would_misread_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        chain_steps(model)


def test_a_parameter_free_module_called_twice_is_one_step_per_call():
    """One ReLU and one MaxPool2d module after every layer: the chain of the unrolled network."""
    model = Reused(nn.MaxPool2d(2))
    steps = [s.name for s in chain_steps(model)]
    assert steps == ["conv1", "act", "pool", "conv2", "act", "pool", "flatten", "fc1", "act", "fc2"]
    assert reused_modules(chain_steps(model)) == {"act": "", "pool": ""}
    same = nn.ReLU()
    aliased = nn.Sequential(nn.Linear(4, 4), same, nn.Linear(4, 4), same, nn.Linear(4, 2))  # one module, two names
    assert [s.name for s in chain_steps(aliased)] == ["0", "1", "2", "1", "4"]


def test_untraceable_model_is_refused_with_the_reason():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ValueError, match="torch.fx could not trace it"):
        chain_steps(Dynamic())
