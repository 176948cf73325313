"""The allow-list of function and method calls (``flexrel_core.graph_ops``).

Each call with a module twin gives, on both engines, the relevance of the same network written with that
module (zennit on the module network is the reference, float64); calls that only move elements (``cat``,
``chunk``, a channel shuffle) hand every element its own relevance back, so the total is conserved and
each operand gets its slice; anything else is refused, naming the call and where it is.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_fast_engine import assert_same_as_zennit, fast_lrp, zennit_lrp
from torch import nn

from flexrel_core import parameter_relevance
from flexrel_core.graph import graph_steps
from flexrel_core.relevance import engine_for


class Functional(nn.Module):
    """conv -> ``call`` -> conv -> global pooling -> linear, the call written in ``forward``."""

    def __init__(self, call, channels: int = 3):
        super().__init__()
        self.call = call
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, channels, 3, padding=1)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        x = self.conv2(self.call(self.conv1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def modular(twin: nn.Module) -> nn.Sequential:
    """The same network written with modules; registered in the order they run."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), twin, nn.Conv2d(3, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(3, 3),
    )  # fmt: skip


TWINS = {
    "F.relu": (lambda x: F.relu(x), nn.ReLU()),
    "torch.relu": (torch.relu, nn.ReLU()),
    "x.relu()": (lambda x: x.relu(), nn.ReLU()),
    "F.relu6": (F.relu6, nn.ReLU6()),
    "F.gelu": (F.gelu, nn.GELU()),
    "F.gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), nn.GELU(approximate="tanh")),
    "F.silu": (F.silu, nn.SiLU()),
    "torch.sigmoid": (torch.sigmoid, nn.Sigmoid()),
    "x.tanh()": (lambda x: x.tanh(), nn.Tanh()),
    "F.hardswish": (F.hardswish, nn.Hardswish()),
    "F.hardsigmoid": (F.hardsigmoid, nn.Hardsigmoid()),
    "F.leaky_relu": (lambda x: F.leaky_relu(x, 0.2), nn.LeakyReLU(0.2)),
    "F.elu": (lambda x: F.elu(x, alpha=0.5), nn.ELU(alpha=0.5)),
    "F.max_pool2d": (lambda x: F.max_pool2d(x, 3, 1, 1), nn.MaxPool2d(3, 1, 1)),
    "F.avg_pool2d": (lambda x: F.avg_pool2d(x, 3, stride=1, padding=1), nn.AvgPool2d(3, 1, 1)),
    "F.avg_pool2d no pad count": (
        lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    ),
    "F.adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 4), nn.AdaptiveAvgPool2d(4)),
    "F.adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, 4), nn.AdaptiveMaxPool2d(4)),
    "F.dropout": (lambda x: F.dropout(x, 0.3, training=False), nn.Dropout(0.3)),
    "stochastic_depth": (lambda x: torchvision.ops.stochastic_depth(x, 0.2, "row", False), nn.Identity()),
}


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
@pytest.mark.parametrize("name", TWINS)
def test_a_call_gives_the_relevance_of_its_module_twin_on_both_engines(name, composite):
    call, twin = TWINS[name]
    torch.manual_seed(0)
    reference = modular(twin).double().eval()
    model = Functional(call).double()
    model.load_state_dict({k: v for k, v in zip(model.state_dict(), reference.state_dict().values(), strict=True)})
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    expected = list(parameter_relevance(reference, x, composite=composite, engine="zennit").values())
    assert engine_for(model, composite) == "fast"
    for engine in ("fast", "zennit"):
        got = list(parameter_relevance(model, x, composite=composite, engine=engine).values())
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12 * float(e.abs().max()))


@pytest.mark.parametrize("keepdim", [False, True])
def test_spatial_mean_is_global_average_pooling(keepdim):
    """``x.mean([2, 3])`` (MNASNet, ShuffleNetV2 heads) is ``AdaptiveAvgPool2d(1)`` (and a flatten)."""

    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean([2, 3], keepdim=keepdim).flatten(1))

    model = Mean().double()
    reference = nn.Sequential(model.conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    expected = parameter_relevance(reference, x, engine="zennit")
    for engine in ("fast", "zennit"):
        got = parameter_relevance(model, x, engine=engine)
        for g, e in zip(got.values(), expected.values(), strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)


class Branches(nn.Module):
    """Two branches concatenated along channels (an Inception module), then a channel shuffle
    (ShuffleNetV2's ``channel_shuffle``: view, transpose, contiguous, view), a split with ``chunk`` whose
    halves go to a conv and to the output (ShuffleNetV2's unit), and a concatenation again."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        y = torchvision.models.shufflenetv2.channel_shuffle(y, 2)
        left, right = y.chunk(2, dim=1)
        y = torch.cat((left, torch.relu(self.c(right))), dim=1)
        return self.fc(y.view(y.size(0), -1))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
def test_concatenation_shuffle_and_split_agree_on_both_engines(composite):
    model = Branches().double()
    assert engine_for(model, composite) == "fast"
    assert_same_as_zennit(model, torch.randn(3, 2, 4, 4, dtype=torch.float64), composite)


def test_routes_conserve_relevance_and_hand_each_element_its_own():
    """The relevance leaving the concatenation, shuffle and split equals what reaches them, element by
    element: conv a's output gets channels 0, 2 of the shuffled map (left half), conv b's the others."""
    torch.manual_seed(0)
    model = Branches().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    for lrp in (fast_lrp, zennit_lrp):
        _, layers = lrp(model, x, "epsilon_plus_flat")
        rel_a, rel_b, rel_c = layers["a.weight"][1], layers["b.weight"][1], layers["c.weight"]
        final = layers["fc.weight"][0].view(2, 6, 4, 4)  # relevance of the last concatenation
        # shuffle of [a0 a1 b0 b1 b2 b3] in 2 groups: [a0 b1 a1 b2 b0 b3]; left = [a0 b1 a1], right = [b2 b0 b3]
        torch.testing.assert_close(rel_a[:, 0], final[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(rel_a[:, 1], final[:, 2], rtol=0, atol=0)
        torch.testing.assert_close(rel_b[:, 1], final[:, 1], rtol=0, atol=0)
        torch.testing.assert_close(rel_c[1], final[:, 3:], rtol=0, atol=0)  # c's output: the right half
        shuffled_right = rel_c[0]  # what c sends back to [b2 b0 b3]
        torch.testing.assert_close(rel_b[:, [2, 0, 3]], shuffled_right, rtol=0, atol=0)
        total_in = rel_a.sum() + rel_b.sum()
        total_out = final[:, :3].sum() + shuffled_right.sum()
        torch.testing.assert_close(total_in, total_out, rtol=1e-14, atol=0)


def test_batchnorm_after_a_concatenation_passes_relevance_as_zennit_does():
    """DenseNet's pre-activation BatchNorm reads a concatenation: merged into no layer; zennit's composites
    pass relevance through it unchanged, and so does the fast engine."""

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0, self.norm, self.conv1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1)
            self.fc = nn.Linear(7 * 16, 3)

        def forward(self, x):
            x = torch.relu(self.conv0(x))
            y = self.conv1(F.relu(self.norm(torch.cat([x, x[:, :2]], 1))))
            return self.fc(torch.cat([x, y, x[:, 1:3]], 1).flatten(1))

    model = Dense().double().eval()
    model.norm.running_mean.uniform_(-1, 1)
    model.norm.running_var.uniform_(0.5, 2)
    model.norm.weight.data.uniform_(0.5, 2)
    assert [s.name for s in graph_steps(model) if s.route] == ["getitem", "cat", "getitem", "cat", "flatten"]
    assert_same_as_zennit(model, torch.randn(3, 2, 4, 4, dtype=torch.float64))


class Call(nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call, self.conv, self.fc = call, nn.Conv2d(1, 2, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.call(self.conv(x)).flatten(1))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.exp(self.conv(x))


REFUSED = {
    "torch.exp": (Call(torch.exp), r"exp \(node exp, in the model's forward\) has no LRP rule in FlexRel"),
    "x.clamp": (Call(lambda x: x.clamp(min=0)), r"clamp \(node clamp, in the model's forward\) has no LRP rule"),
    "F.softmax": (Call(lambda x: F.softmax(x, 1)), r"softmax \(node softmax, in the model's forward\)"),
    "F.layer_norm": (Call(lambda x: F.layer_norm(x, (2, 2, 2))), r"layer_norm \(node layer_norm, in the model's"),
    "options computed in forward": (
        Call(lambda x: F.adaptive_avg_pool2d(x, x.shape[2] // 2)),
        r"adaptive_avg_pool2d \(node adaptive_avg_pool2d, .*\) has a module twin but not here: its options",
    ),
    "dropout while training": (
        Call(lambda x: F.dropout(x, 0.5, training=True)),
        r"dropout .*called with training=True",
    ),
    "a call in a submodule": (
        nn.Sequential(Block(), nn.Flatten(), nn.Linear(8, 2)),
        r"exp \(node exp, in the forward of 0\) has no LRP rule",
    ),
    "LayerNorm module": (
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 2, 2], elementwise_affine=False), nn.Flatten()),
        r"LayerNorm module 1 has no LRP rule in FlexRel",
    ),
}


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
@pytest.mark.parametrize("name", REFUSED)
def test_unknown_calls_are_refused_naming_the_call_and_its_place(name, engine):
    model, match = REFUSED[name]
    with pytest.raises(ValueError, match=match):
        parameter_relevance(model, torch.randn(1, 1, 4, 4), engine=engine)


def test_layers_that_never_run_in_eval_mode_are_refused_by_name():
    """GoogLeNet's auxiliary classifiers run only in training: no relevance reaches them."""
    model = torchvision.models.googlenet(weights=None, init_weights=False, num_classes=4)
    with pytest.raises(ValueError, match=r"\['aux1.conv.conv.weight'.*never run in eval mode.*aux_logits=False"):
        parameter_relevance(model, torch.randn(1, 3, 32, 32))
