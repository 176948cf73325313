"""A gallery of the ways PyTorch users write a CNN, each scored or refused with a reason that says what
to change.

Scored models run in float64 with BatchNorm statistics randomised: the fast engine and zennit give the
same parameter relevance (to 1e-10 of its largest value) wherever both apply, ``engine="auto"`` takes
the engine the entry names, and a model that calls a parameter-free module at several places gives
the relevance of the same network written with one module per call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from nets import Reused
from torch import nn

from flexrel_core import parameter_relevance
from flexrel_core.relevance import engine_for
from flexrel_core.training import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """These models run as fast on one torch thread, and stay fast on a busy machine."""
    with torch_threads(1):
        yield


class TutorialNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial CNN: one ``self.pool`` after both convolutions, ``F.relu`` calls."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class FunctionalView(nn.Module):
    """Functional activations and pooling, and ``x.view(x.size(0), -1)`` (older tutorials, LeNet-style)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class SequentialInForward(nn.Module):
    """``features`` and ``classifier`` ``nn.Sequential`` blocks, flattened in a custom ``forward``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.ReLU(inplace=True), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BatchNormNet(nn.Module):
    """BatchNorm after each Conv2d and after a Linear, Dropout2d and Dropout, one ReLU module throughout."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc1, self.bn3 = nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 5)
        self.relu, self.pool, self.drop2d, self.drop = nn.ReLU(), nn.MaxPool2d(2), nn.Dropout2d(0.2), nn.Dropout()

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.drop2d(self.pool(self.relu(self.bn2(self.conv2(x)))))
        return self.fc2(self.drop(self.relu(self.bn3(self.fc1(x.flatten(1))))))


class BatchNormDefinedApart(BatchNormNet):
    """The same network with its layers defined as ``conv1, conv2, bn1, bn2``: zennit merges a BatchNorm
    into the layer defined just before it, which here is the wrong one."""

    def __init__(self):
        super().__init__()
        bn1, bn2 = self.bn1, self.bn2
        del self.bn1, self.bn2, self.fc1, self.bn3, self.fc2
        self.bn1, self.bn2 = bn1, bn2
        self.fc1, self.bn3, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)


class DropoutReused(nn.Module):
    """One ``self.dropout`` module after two Linear layers, one ``nn.Flatten`` and an ELU activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.ELU()
        self.flatten = nn.Flatten()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4 * 6 * 6, 32), nn.Linear(32, 16), nn.Linear(16, 3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.flatten(self.act(self.conv(x)))
        x = self.dropout(self.act(self.fc1(x)))
        return self.fc3(self.dropout(self.act(self.fc2(x))))


class GlobalPool(nn.Module):
    """All-convolutional body with ``AdaptiveAvgPool2d(1)`` (global average pooling) before the head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        return self.head(self.gap(self.body(x)).flatten(1))


class SharedLayer(nn.Module):
    """One Linear layer applied twice (tied weights)."""

    def __init__(self):
        super().__init__()
        self.embed, self.hidden, self.out = nn.Linear(12, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.hidden(torch.relu(self.embed(x))))
        return self.out(torch.relu(self.hidden(x)))


def small_torchvision(factory: Callable[..., nn.Module], features: int) -> nn.Module:
    """A torchvision model, randomly initialised, 10 classes, its classifier kept in layout but 64 units
    wide (the 4096-unit layers change nothing these tests look at and cost seconds to initialise)."""
    with torch.device("meta"):
        model = factory(weights=None, num_classes=10)
    model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    layers = list(model.classifier)
    linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    for i in linears:
        layers[i] = nn.Linear(features if i == linears[0] else 64, 10 if i == linears[-1] else 64)
    model.classifier = nn.Sequential(*layers)
    return model


class Product(nn.Module):
    """Two branches multiplied: no LRP rule, refused by name."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.a(x) * self.b(x))


@dataclass(frozen=True)
class Entry:
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]  # one input sample
    auto: str | None = None  # the engine "auto" takes; None: refused
    fast: bool = True  # the fast engine handles it
    zennit: bool = True  # zennit handles it
    unrolled: Callable[[nn.Module], nn.Module] | None = None  # the same network with one module per call
    refusal: str = ""  # what the refusal says, for refused entries


GALLERY = {
    "reused ReLU and MaxPool2d": Entry(lambda: Reused(nn.MaxPool2d(2)), (1, 8, 8), "fast", unrolled=Reused.unrolled),
    "reused AvgPool2d": Entry(
        lambda: Reused(nn.AvgPool2d(2)), (1, 8, 8), "fast", zennit=False, unrolled=Reused.unrolled
    ),
    "PyTorch CIFAR-10 tutorial net": Entry(TutorialNet, (3, 32, 32), "fast"),
    "functional F.relu, F.max_pool2d, x.view(x.size(0), -1)": Entry(FunctionalView, (1, 8, 8), "fast"),
    "nn.Sequential blocks in a custom forward": Entry(SequentialInForward, (3, 16, 16), "fast"),
    "BatchNorm after Conv2d and Linear, Dropout": Entry(BatchNormNet, (3, 16, 16), "fast"),
    "reused Dropout, Flatten, ELU": Entry(DropoutReused, (1, 8, 8), "fast"),
    "AdaptiveAvgPool2d(1) head": Entry(GlobalPool, (3, 16, 16), "fast"),
    "torchvision VGG11-BN at 32 px": Entry(
        lambda: small_torchvision(torchvision.models.vgg11_bn, 512 * 7 * 7), (3, 32, 32), "fast"
    ),
    "torchvision AlexNet at 64 px": Entry(
        lambda: small_torchvision(torchvision.models.alexnet, 256 * 6 * 6), (3, 64, 64), "fast"
    ),
    "BatchNorm defined apart from its layer": Entry(
        BatchNormDefinedApart,
        (3, 16, 16),
        refusal=r"BatchNorm bn1 runs right after conv1 but is not registered right after it.*define each BatchNorm",
    ),
    "one Linear applied twice": Entry(
        SharedLayer, (12,), refusal=r"\['hidden'\] are called more than once \(shared weights\).*its own module"
    ),
    "torchvision ResNet-18 (skip connections)": Entry(
        lambda: torchvision.models.resnet18(weights=None, num_classes=4), (3, 32, 32), "fast"
    ),
    "torchvision SqueezeNet 1.1 (concatenations)": Entry(
        lambda: torchvision.models.squeezenet1_1(weights=None, num_classes=4), (3, 32, 32), "fast"
    ),
    "a product of two branches": Entry(
        lambda: Product(),
        (4,),
        refusal=r"cannot explain Product: mul combines the outputs of a, b: a product of activations.*"
        r"\(node mul, in the model's forward\)",
    ),
}


def prepared(entry: Entry, seed: int = 0) -> nn.Module:
    """The entry's model in float64 and eval mode, with random BatchNorm statistics."""
    torch.manual_seed(seed)
    model = entry.build().double().eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model


def inputs(entry: Entry, n: int = 3) -> torch.Tensor:
    return torch.randn(n, *entry.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(largest |a - b| over every weight, largest |b|), matching layers by order."""
    pairs = list(zip(a.values(), b.values(), strict=True))
    return max(float((x - y).abs().max()) for x, y in pairs), max(float(y.abs().max()) for _, y in pairs)


def relevance_by_engine(entry: Entry, composite: str) -> dict[str, dict[str, torch.Tensor]]:
    """Parameter relevance from every engine that handles the entry (and "reference": zennit on the
    unrolled network, for an entry zennit cannot run as written)."""
    model, x = prepared(entry), inputs(entry)
    out = {
        e: parameter_relevance(model, x, composite=composite, engine=e) for e in ("fast", "zennit") if getattr(entry, e)
    }
    if entry.unrolled is not None:
        out["reference"] = parameter_relevance(entry.unrolled(model), x, composite=composite, engine="zennit")
    return out


SCORED = [name for name, e in GALLERY.items() if e.auto]
REFUSED = [name for name, e in GALLERY.items() if not e.auto]


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
@pytest.mark.parametrize("name", SCORED)
def test_scored_and_both_engines_agree(name, composite):
    entry = GALLERY[name]
    model = prepared(entry)
    assert engine_for(model, composite) == entry.auto
    rel = relevance_by_engine(entry, composite)
    auto = parameter_relevance(model, inputs(entry), composite=composite)
    assert all(torch.equal(auto[k], rel[entry.auto][k]) for k in auto)
    assert all(float(r.abs().sum()) > 0 for r in auto.values())
    results = list(rel.values())
    for other in results[1:]:
        difference, scale = max_difference(other, results[0])
        assert difference <= 1e-10 * scale, (name, difference, scale)


@pytest.mark.parametrize("name", SCORED)
def test_an_engine_that_cannot_says_so(name):
    entry = GALLERY[name]
    model, x = prepared(entry), inputs(entry, 1)
    for engine, handles in (("fast", entry.fast), ("zennit", entry.zennit)):
        if not handles:
            with pytest.raises(ValueError, match=rf"{'fast relevance engine' if engine == 'fast' else engine}"):
                parameter_relevance(model, x, engine=engine)


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
@pytest.mark.parametrize("name", REFUSED)
def test_refused_with_what_to_change(name, engine):
    entry = GALLERY[name]
    with pytest.raises(ValueError, match=entry.refusal):
        parameter_relevance(prepared(entry), inputs(entry, 1), engine=engine)


def test_a_batch_of_one_in_train_mode_is_scored_as_in_eval_mode():
    """Relevance runs the model in eval mode (Dropout off, BatchNorm on its running statistics) and
    gives the model back in the mode it came in."""
    entry = GALLERY["BatchNorm after Conv2d and Linear, Dropout"]
    model, x = prepared(entry), inputs(entry, 1)
    expected = parameter_relevance(model, x)
    trained = copy.deepcopy(model).train()
    got = parameter_relevance(trained, x)
    assert trained.training and all(torch.equal(got[k], expected[k]) for k in expected)
