"""Which graphs count as a plain chain of layers, which as a residual network (sums of two tensors), and the
refusal of the others by both relevance engines, saying what was found."""

from __future__ import annotations

import pytest
import torch
import torchvision
from nets import Reused
from torch import nn

from flexrel_core import build_model, lrp_backward, parameter_relevance
from flexrel_core.graph import (
    batchnorm_merges,
    chain_steps,
    graph_merges,
    graph_steps,
    is_chain,
    is_chain_steps,
    reused_modules,
)


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


def test_resnet18_is_a_residual_graph_not_a_chain():
    """torchvision's ResNet-18: 8 BasicBlocks, 8 sums (each reading its block's last BatchNorm and its input
    or downsample branch), 20 BatchNorms merged by the graph; chain_steps says why it is not a chain."""
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    steps = graph_steps(model)
    assert not is_chain_steps(steps) and not is_chain(model)
    sums = [s for s in steps if s.is_sum]
    assert len(sums) == 8 and all(len(s.inputs) == 2 for s in sums)
    names = ["input"] + [s.name for s in steps]
    assert [names[i] for i in sums[0].inputs] == ["layer1.0.bn2", "maxpool"]
    assert [names[i] for i in sums[2].inputs] == ["layer2.0.bn2", "layer2.0.downsample.1"]
    merges = graph_merges(steps)
    assert len(merges) == 20 and merges["layer2.0.downsample.1"] == "layer2.0.downsample.0"
    assert reused_modules(steps)["layer1.0.relu"] == ""  # one ReLU module twice per block: two steps
    with pytest.raises(ValueError, match=r"ResNet is not a plain chain.*maxpool feeds 2 operations"):
        chain_steps(model)


class Concatenation(nn.Module):
    """Two branches concatenated along the channels (Inception, DenseNet, U-Net)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 1), nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).flatten(1))


class Combined(nn.Module):
    """Two branches combined by ``how``: a difference, a product, an in-place sum, a scaled sum, or a sum
    whose result is never used."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        if self.how == "sub":
            return self.fc(a - b)
        if self.how == "mul":
            return self.fc(a * b)
        if self.how == "add_":
            return self.fc(a.add_(b))
        if self.how == "alpha":
            return self.fc(torch.add(a, b, alpha=2))
        _ = a + b
        return self.fc(a)


REFUSED = {
    "attention": (Attention(), (2, 5, 4), r"matmul combines the outputs of q, transpose: a product of activations"),
    "difference": (Combined("sub"), (2, 4), r"sub combines the outputs of a, b: a difference"),
    "product": (Combined("mul"), (2, 4), r"mul combines the outputs of a, b: a product of activations"),
    "in-place sum": (Combined("add_"), (2, 4), r"a.add_\(...\) adds in place.*write x = x \+ y"),
    "scaled sum": (Combined("alpha"), (2, 4), r"add is called with \{'alpha': 2\}"),
    "unused sum": (Combined("unused"), (2, 4), r"the output of add feeds nothing \(a result computed and never used\)"),
}


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
@pytest.mark.parametrize("name", REFUSED)
def test_graphs_without_an_lrp_rule_are_refused_saying_what_was_found(name, engine):
    model, shape, what = REFUSED[name]
    with pytest.raises(ValueError, match=rf"cannot explain {type(model).__name__}: {what}.*skip connections"):
        parameter_relevance(model, torch.randn(shape), engine=engine)


def test_lrp_backward_refuses_them_too():
    with pytest.raises(ValueError, match="a product of activations"):
        lrp_backward(Combined("mul"), torch.randn(1, 4))


def test_a_concatenation_is_read_as_a_route_of_both_branches():
    steps = graph_steps(Concatenation())
    cat = next(s for s in steps if s.name == "cat")
    assert cat.route and cat.inputs == (1, 2)


class SharedBatchNormInput(nn.Module):
    """A BatchNorm normalising a conv's output that the skip connection reads too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Linear(2 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc((self.bn(y) + y).flatten(1))


def test_batchnorm_on_an_output_the_skip_reads_too_is_not_merged():
    """Merging bn into conv would change what the skip receives: zennit passes relevance through it
    unchanged, and so does the fast engine."""
    from flexrel_core.relevance import engine_for

    model = SharedBatchNormInput().double().eval()
    assert graph_merges(graph_steps(model)) == {}
    assert engine_for(model) == "fast"
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    fast, zennit = parameter_relevance(model, x, engine="fast"), parameter_relevance(model, x, engine="zennit")
    for name in zennit:
        torch.testing.assert_close(fast[name], zennit[name], rtol=1e-10, atol=1e-14)


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
