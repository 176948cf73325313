"""The fast relevance engine against zennit (the reference), in float64: input relevance, every layer's
rel(a) and rel(b), parameter relevance; the model left untouched; what it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from flexrel_core import build_model, lrp_backward, parameter_relevance, pruning_scores
from flexrel_core.fast_engine import lrp_fast
from flexrel_core.fast_plan import make_plan

Layers = dict[str, tuple[torch.Tensor, torch.Tensor]]


def zennit_lrp(model: nn.Module, x: torch.Tensor, composite: str, targets=None) -> tuple[torch.Tensor, Layers]:
    """zennit's input relevance and (rel(a), rel(b)) of every prunable layer, from tensor hooks."""
    grads: dict[tuple[str, str], torch.Tensor] = {}

    def register(name, module, a, b):
        for tensor, side in ((a, "a"), (b, "b")):
            tensor.register_hook(lambda g, key=(name, side): grads.__setitem__(key, g.detach().clone()))

    rel_x = lrp_backward(model, x, targets, composite=composite, layer_hooks=register)
    return rel_x, {name: (grads[(name, "a")], grads[(name, "b")]) for name, _ in grads}


def fast_lrp(model: nn.Module, x: torch.Tensor, composite: str, targets=None) -> tuple[torch.Tensor, Layers]:
    layers: Layers = {}
    rel_x = lrp_fast(model, x, targets, composite=composite, layer_hooks=lambda n, a, b: layers.__setitem__(n, (a, b)))
    return rel_x, layers


def assert_relative(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    """Equal to ``rtol`` relative to each tensor's scale (elementwise, with the tensor's max as floor)."""
    assert got.shape == expected.shape and got.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def assert_same_as_zennit(model: nn.Module, x: torch.Tensor, composite: str = "epsilon_plus_flat", targets=None):
    rel_z, layers_z = zennit_lrp(model, x, composite, targets)
    rel_f, layers_f = fast_lrp(model, x, composite, targets)
    assert_relative(rel_f, rel_z)
    assert layers_f.keys() == layers_z.keys()
    for name in layers_z:
        assert_relative(layers_f[name][0], layers_z[name][0])
        assert_relative(layers_f[name][1], layers_z[name][1])
    assert float(rel_z.abs().sum()) > 0


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model


GEOMETRIES = {
    "padded": dict(kernel_size=3, padding=1),
    "stride": dict(kernel_size=3, stride=2, padding=1),
    "stride_uncovered": dict(kernel_size=2, stride=3),
    "dilation": dict(kernel_size=2, dilation=2, padding=1),
    "groups": dict(kernel_size=3, groups=2, padding=1, stride=(1, 2)),
    "same_odd": dict(kernel_size=3, padding="same"),
    "same_even": dict(kernel_size=(2, 3), padding="same"),
    "same_dilated": dict(kernel_size=2, dilation=3, padding="same"),
    "valid": dict(kernel_size=3, padding="valid"),
    "no_bias": dict(kernel_size=3, padding=2, dilation=2, bias=False),
    "depthwise": dict(kernel_size=3, groups=4, padding=1),
}


def conv_net(geometry: dict, in_channels: int = 2, size: int = 9) -> nn.Module:
    """Conv(geometry) -> ReLU -> Conv(geometry) -> ReLU -> Flatten -> Linear -> ReLU -> Linear: the
    geometry under the flat rule (first layer) and the z+ rule (after a ReLU)."""
    first = nn.Conv2d(in_channels, 4, **geometry)
    second = nn.Conv2d(4, 4, **geometry)
    with torch.no_grad():
        h = second(first(torch.zeros(1, in_channels, size, size)))
    return nn.Sequential(
        first, nn.ReLU(), second, nn.ReLU(), nn.Flatten(), nn.Linear(h.numel(), 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
def test_conv_geometries(geometry, composite):
    in_channels = 4 if geometry.get("groups") == 4 else 2
    assert_same_as_zennit(conv_net(geometry, in_channels), torch.randn(5, in_channels, 9, 9, dtype=torch.float64))


POOLS = {
    "max": nn.MaxPool2d(2),
    "max_overlapping": nn.MaxPool2d(3, stride=2, padding=1),
    "max_dilated_ceil": nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True),
    "avg": nn.AvgPool2d(2),
    "avg_overlapping": nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "avg_ceil_divisor": nn.AvgPool2d(2, ceil_mode=True, divisor_override=3),
    "adaptive_overlapping": nn.AdaptiveAvgPool2d((3, 4)),  # 7x7 -> windows overlap
    "adaptive_upsampling": nn.AdaptiveAvgPool2d((9, 9)),  # as VGG16's (7, 7) on small inputs
}


@pytest.mark.parametrize("pool", POOLS.values(), ids=POOLS.keys())
def test_pooling(pool):
    body = [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Conv2d(3, 4, 2), nn.ReLU()]
    with torch.no_grad():
        h = nn.Sequential(*body)(torch.zeros(1, 2, 7, 7))
    model = nn.Sequential(*body, nn.Flatten(), nn.Linear(h.numel(), 3)).double()
    assert_same_as_zennit(model, torch.randn(4, 2, 7, 7, dtype=torch.float64))


def test_batchnorm_merged_like_zennit_conv_and_linear_with_and_without_bias():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(8, 5, bias=False), nn.BatchNorm1d(5),
    ).double()  # fmt: skip
    assert_same_as_zennit(randomize_batchnorm(model), torch.randn(6, 2, 6, 6, dtype=torch.float64))


def test_linear_layers_first_layer_flat_and_targets():
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 4)
    ).double()
    x = torch.randn(8, 3, 4, dtype=torch.float64)
    assert_same_as_zennit(model, x)
    assert_same_as_zennit(model, x, composite="epsilon_plus", targets=torch.arange(8) % 4)


def test_signed_inputs_in_the_middle_use_both_zplus_parts():
    """A conv after a non-ReLU activation or right after another conv sees negative inputs."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2),
        nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3),
    ).double()  # fmt: skip
    assert [op.rule for op in make_plan(model) if op.rule] == ["flat", "zplus_signed", "zplus_signed", "epsilon"]
    assert_same_as_zennit(model, torch.randn(5, 2, 6, 6, dtype=torch.float64))


class Functional(nn.Module):
    """ReLU and flatten as function calls (their gradient, as in zennit), in-place ReLU on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.conv(self.pre(x)))
        return self.fc(torch.flatten(x, 1).relu())


def test_functional_relu_and_flatten():
    model = Functional().double()
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    original = x.clone()
    rel_f, _ = fast_lrp(model, x, "epsilon_plus_flat")
    assert torch.equal(x, original), "the caller's inputs were modified"
    assert_same_as_zennit(model, x)


class FunctionalPool(nn.Module):
    """F.max_pool2d with positional and keyword options, as tutorials write it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, stride=2, padding=1, ceil_mode=True)
        return self.fc(x.view(-1, 16))


class SizedView(nn.Module):
    """Reshapes sized from the tensor: ``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], x.size(1) * 2, -1)``."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 3), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.reshape(x.shape[0], x.size(1) * 2, -1)
        return self.fc(x.view(x.size(0), -1))


def test_reshapes_sized_from_their_input():
    model = SizedView().double()
    assert [op.kind for op in make_plan(model)] == ["conv", "pass", "route", "route", "linear"]
    assert_same_as_zennit(model, torch.randn(3, 2, 6, 6, dtype=torch.float64))


class SizedByInput(nn.Module):
    """A size read from the model's input, not from the tensor reshaped: the fast engine reads it from there."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        n = x.size(0)
        return self.fc(torch.relu(self.conv(x)).view(n, -1))


def test_a_size_read_from_another_tensor():
    assert [op.kind for op in make_plan(SizedByInput())] == ["conv", "pass", "route", "linear"]
    assert_same_as_zennit(SizedByInput().double(), torch.randn(3, 1, 6, 6, dtype=torch.float64))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
def test_functional_max_pooling(composite):
    model = FunctionalPool().double()
    assert [op.kind for op in make_plan(model, composite)][:4] == ["conv", "pass", "maxpool", "conv"]
    assert_same_as_zennit(model, torch.randn(4, 1, 7, 7, dtype=torch.float64), composite)
    with pytest.raises(ValueError, match=r"max_pool2d_with_indices \(node .*, in the forward of 1\) has no LRP rule"):
        make_plan(nn.Sequential(nn.Conv2d(1, 2, 3), Lambda(lambda x: F.max_pool2d(x, 2, return_indices=True)[0])))


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("digits_cnn", {}, (6, 1, 8, 8)),
        ("vgg_small", dict(in_channels=3, image_size=32), (3, 3, 32, 32)),
        ("vgg_small", dict(in_channels=1, image_size=28, batch_norm=True), (3, 1, 28, 28)),
    ],
)
def test_workbook_models(name, kwargs, shape):
    model = randomize_batchnorm(build_model(name, **kwargs).double().eval())
    assert_same_as_zennit(model, torch.randn(shape, dtype=torch.float64))


def vgg16_bn_small_head() -> nn.Module:
    """torchvision's VGG16-BN, randomly initialised, with a 16-unit classifier (the 102 M-weight head
    changes nothing the test looks at and costs seconds to initialise)."""
    with torch.device("meta"):
        model = torchvision.models.vgg16_bn(weights=None)
    model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 5))
    return randomize_batchnorm(model)


@pytest.mark.slow
def test_torchvision_vgg16_bn_at_32px():
    """BatchNorm merged into all 13 convs, max pooling, and the (7, 7) adaptive pool repeating a 1x1 map."""
    model = vgg16_bn_small_head().double().eval()
    assert_same_as_zennit(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_torchvision_vgg16_qualifies_for_the_fast_engine():
    for factory in (torchvision.models.vgg16, torchvision.models.vgg16_bn):
        with torch.device("meta"):  # the plan needs the structure, not the values
            rules = [op.rule for op in make_plan(factory(weights=None)) if op.rule]
        assert rules == ["flat"] + ["zplus"] * 12 + ["epsilon"] * 3


@pytest.mark.parametrize("aggregate", ["abs", "positive", "signed"])
def test_parameter_relevance_equals_zennit_path(aggregate):
    model = randomize_batchnorm(build_model("digits_cnn", batch_norm=True).double())
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    zennit = parameter_relevance(model, x, aggregate=aggregate, engine="zennit")
    fast = parameter_relevance(model, x, aggregate=aggregate, engine="fast", batch_size=2)
    auto = parameter_relevance(model, x, aggregate=aggregate)
    assert zennit.keys() == fast.keys()
    for name in zennit:
        assert_relative(fast[name], zennit[name])
        assert torch.equal(auto[name], parameter_relevance(model, x, aggregate=aggregate, engine="fast")[name])


def test_pruning_scores_pass_the_engine_through(monkeypatch):
    model = build_model("digits_cnn").double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    fast = pruning_scores(model, x, engine="fast")
    zennit = pruning_scores(model, x, engine="zennit")
    for name in fast:
        torch.testing.assert_close(fast[name], zennit[name], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="cannot handle"):
        pruning_scores(model, x, engine="fast", composite="epsilon_alpha2_beta1")


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_model_comes_back_untouched():
    model = randomize_batchnorm(build_model("digits_cnn", batch_norm=True)).train()
    before = state(model)
    modules_before = [type(m) for m in model.modules()]
    x = torch.randn(4, 1, 8, 8)
    parameter_relevance(model, x, engine="fast")
    lrp_fast(model, x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert [type(m) for m in model.modules()] == modules_before
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert all(p.grad is None for p in m.parameters(recurse=False))


def test_lrp_fast_inside_no_grad():
    model = build_model("digits_cnn").double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    expected = lrp_fast(model, x)
    with torch.no_grad():
        got = lrp_fast(model, x)
    assert not got.requires_grad and torch.equal(got, expected)


def test_fast_refuses_what_it_does_not_handle_and_auto_falls_back_to_zennit():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(72, 3))
    x = torch.randn(3, 1, 5, 5)
    with pytest.raises(ValueError, match=r"engine cannot handle Sequential: it has no rule for Upsample"):
        parameter_relevance(model, x, engine="fast")
    auto, zennit = parameter_relevance(model, x), parameter_relevance(model, x, engine="zennit")
    assert all(torch.equal(auto[n], zennit[n]) for n in zennit)
    digits, x = build_model("digits_cnn"), torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"composite 'epsilon_alpha2_beta1' is not one it implements.*engine='zennit'"):
        parameter_relevance(digits, x, engine="fast", composite="epsilon_alpha2_beta1")
    with pytest.raises(ValueError, match=r"unknown engine 'quick'; expected one of \('auto', 'fast', 'zennit'\)"):
        parameter_relevance(digits, x, engine="quick")


def test_batchnorm_not_after_a_layer_passes_relevance_as_zennit_does():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 3))
    model[2].running_mean.uniform_(-1, 1)
    model[2].running_var.uniform_(0.5, 2)
    assert [op.kind for op in make_plan(model)] == ["conv", "pass", "bn", "reshape", "linear"]
    assert_same_as_zennit(model.double().eval(), torch.randn(3, 1, 5, 5, dtype=torch.float64))
