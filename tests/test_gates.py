"""Squeeze-and-excitation gates: ``x * g`` with ``g`` a sigmoid of the pooled ``x`` is read with the gate held
constant (Arras et al. 2017): all of the product's relevance goes to ``x``, none to the gate branch.

Checked against an independent float64 computation that treats the gate as a constant (the epsilon rule on
the product as a diagonal linear layer, ``tests/lrp_reference.py`` for the layer after it), on both engines;
products without that reading stay refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from lrp_reference import epsilon_lrp, stabilize
from test_fast_engine import assert_same_as_zennit, fast_lrp, zennit_lrp
from torch import nn

from flexrel_core import parameter_relevance
from flexrel_core.graph import graph_steps


class HandGate(nn.Module):
    """``x * F.hardsigmoid(fc2(relu(fc1(F.adaptive_avg_pool2d(x, 1)))))``, as a user writes it."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, 2, 1), nn.Conv2d(2, channels, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Gated(nn.Module):
    """conv -> ReLU -> squeeze-and-excitation gate -> flatten -> linear."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.conv1, self.se, self.fc = nn.Conv2d(2, 4, 3, padding=1), gate, nn.Linear(4 * 9, 3)

    def forward(self, x):
        return self.fc(self.se(torch.relu(self.conv1(x))).flatten(1))


GATES = {
    "torchvision SqueezeExcitation": lambda: torchvision.ops.SqueezeExcitation(4, 2),
    "hand-written, F.hardsigmoid": lambda: HandGate(4),
}


@pytest.mark.parametrize("name", GATES)
def test_relevance_equals_a_computation_with_the_gate_held_constant(name):
    torch.manual_seed(0)
    model = Gated(GATES[name]()).double().eval()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    assert [s.name for s in graph_steps(model) if s.gate] == ["mul"]
    with torch.no_grad():
        a = torch.relu(model.conv1(x))
        y = model.se(a)
        g = y / a.where(a != 0, 1.0)  # the gate's value (where a = 0 the product is 0 anyway)
        logits = model.fc(y.flatten(1))
    start = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), 1.0) * logits
    rel_y = epsilon_lrp(y.flatten(1), model.fc.weight, model.fc.bias, start).view_as(y)
    # y = diag(g) a with g a constant: each output reads one input, so it takes all of that output's
    # relevance (the epsilon rule on it, (a g) rel_y / stab(a g), is the same up to its stabiliser)
    rel_a = rel_y
    torch.testing.assert_close((a * g) * rel_y / stabilize(a * g), rel_a, rtol=1e-2, atol=1e-9)
    for lrp in (fast_lrp, zennit_lrp):
        _, layers = lrp(model, x, "epsilon_plus_flat")
        torch.testing.assert_close(layers["fc.weight"][0].view_as(y), rel_y, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(layers["conv1.weight"][1], rel_a, rtol=1e-10, atol=1e-14)
        for side in (0, 1):  # the gate branch gets no relevance
            assert not layers["se.fc1.weight"][side].any() and not layers["se.fc2.weight"][side].any()
        torch.testing.assert_close(layers["conv1.weight"][1].sum(), layers["fc.weight"][0].sum(), rtol=1e-12, atol=0)
    assert_same_as_zennit(model, x)
    relevance = parameter_relevance(model, x)
    assert not relevance["se.fc1.weight"].any() and relevance["conv1.weight"].abs().sum() > 0


class NotAGate(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
        self.fc1, self.fc = nn.Conv2d(2, 2, 1), nn.Linear(2 * 16, 2)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.how == "gate of another map":
            y = a * torch.sigmoid(self.fc1(F.adaptive_avg_pool2d(b, 1)))
        elif self.how == "no pooling (a SiLU by hand)":
            y = a * torch.sigmoid(a)
        elif self.how == "no sigmoid":
            y = a * self.fc1(F.adaptive_avg_pool2d(a, 1))
        else:
            y = a * b
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("how", ["gate of another map", "no pooling (a SiLU by hand)", "no sigmoid", "two maps"])
@pytest.mark.parametrize("engine", ["fast", "zennit"])
def test_products_without_a_gate_reading_stay_refused_by_name(how, engine):
    with pytest.raises(ValueError, match=r"mul combines the outputs of .*a product of activations.*\(node mul, in"):
        parameter_relevance(NotAGate(how), torch.randn(1, 1, 4, 4), engine=engine)


def test_a_gate_broadcast_by_hand_is_refused_by_name():
    """``expand_as`` copies the gate over the map: it reads two tensors, and is refused by name."""

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 16, 2)

        def forward(self, x):
            a = self.conv(x)
            return self.fc((a * torch.sigmoid(a.mean([2, 3], keepdim=True)).expand_as(a).contiguous()).flatten(1))

    with pytest.raises(ValueError, match=r"expand_as combines the outputs of sigmoid, conv.*\(node expand_as"):
        parameter_relevance(Wide(), torch.randn(1, 1, 4, 4))
