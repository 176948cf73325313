"""Relevance through skip connections: a gallery of residual networks on which the fast engine and zennit
agree layer by layer in float64, conservation of relevance through the sums, an independent hand-run LRP
of tiny residual networks, and torchvision's ResNet-18 against zennit's own ``ResNetCanonizer``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from lrp_reference import epsilon_lrp, flat_lrp, flat_lrp_connections, sum_lrp, toeplitz, zplus_lrp
from test_fast_engine import assert_relative, assert_same_as_zennit, fast_lrp, randomize_batchnorm, zennit_lrp
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from flexrel_core import lrp_backward, lrp_fast, parameter_relevance, pruning_scores
from flexrel_core.fast_plan import make_plan
from flexrel_core.layers import prunable_layers
from flexrel_core.lrp_inputs import start_relevance
from flexrel_core.relevance import engine_for
from flexrel_core.training import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models run as fast on one torch thread, and stay fast on a busy machine."""
    with torch_threads(1):
        yield


def torchvision_blocks() -> nn.Module:
    """torchvision's BasicBlock and Bottleneck at small widths, with and without 1x1-conv downsample branches."""

    def down(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(conv1x1(cin, cout, 2), nn.BatchNorm2d(cout))

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down(8, 16)),
        Bottleneck(16, 4), Bottleneck(16, 8, stride=2, downsample=down(16, 32)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )  # fmt: skip


class HandBlocks(nn.Module):
    """Hand-written blocks: ``out += identity`` on a fresh tensor, one ReLU module throughout, a strided
    projection shortcut, F.relu after the sum, max pooling and a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.relu = nn.Conv2d(1, 6, 3, padding=1), nn.ReLU()
        self.conv1, self.bn1 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(6, 8, 1, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        x = self.relu(out)
        x = F.relu(self.conv3(x) + self.shortcut(x))
        return self.fc2(self.relu(self.fc1(self.pool(x).flatten(1))))


class ProjectionFirst(nn.Module):
    """The shortcut's conv and BatchNorm defined before the main path, their calls interleaved with it
    (conv1, shortcut conv, bn1, shortcut bn): BatchNorm is merged by the graph, not by definition order;
    ``torch.add`` and ``x.add(y)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.proj_bn = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x), self.proj(x)
        a, b = self.bn1(a), self.proj_bn(b)
        y = torch.relu(torch.add(self.conv2(torch.relu(a)), b))
        return self.fc(torch.flatten(self.gap(y.add(y)), 1))


class ResidualMLP(nn.Module):
    """Linear blocks with skips, BatchNorm1d, Dropout, a three-way sum ``a + b + c``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.fc1, self.bn1, self.fc2 = nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 16)
        self.fc3, self.drop, self.out = nn.Linear(16, 16), nn.Dropout(0.3), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        a = torch.relu(self.bn1(self.fc1(h)))
        b = torch.relu(self.fc2(a))
        c = self.fc3(self.drop(b))
        return self.out(torch.relu(h + b + c))


class PreActivation(nn.Module):
    """A pre-activation block (He et al. 2016, "Identity mappings"): BatchNorm -> ReLU -> conv, the first
    BatchNorm reading the block's input. zennit passes relevance through it unchanged, and so does the
    fast engine, which merges BatchNorm only into the layer before it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.fc((out + x).flatten(1))


GALLERY = {  # name: (model, one sample's shape, the engine "auto" takes)
    "torchvision BasicBlock and Bottleneck": (torchvision_blocks, (3, 12, 12), "fast"),
    "hand-written blocks, +=, projection": (HandBlocks, (1, 8, 8), "fast"),
    "shortcut first, torch.add, x.add(x)": (ProjectionFirst, (2, 6, 6), "fast"),
    "residual MLP, three-way sum": (ResidualMLP, (10,), "fast"),
    "pre-activation block": (PreActivation, (1, 6, 6), "fast"),
}
BOTH = [name for name, (_, _, auto) in GALLERY.items() if auto == "fast"]


def built(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The gallery model in float64 and eval mode, random BatchNorm statistics, and a batch of 4."""
    build, shape, _ = GALLERY[name]
    torch.manual_seed(seed)
    model = randomize_batchnorm(build().double().eval())
    return model, torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
@pytest.mark.parametrize("name", BOTH)
def test_engines_agree_layer_by_layer(name, composite):
    """Input relevance and every layer's rel(a) and rel(b), fast engine against zennit, to 1e-10."""
    model, x = built(name)
    assert engine_for(model, composite) == "fast"
    assert_same_as_zennit(model, x, composite)


@pytest.mark.parametrize("aggregate", ["abs", "signed"])
@pytest.mark.parametrize("name", list(GALLERY))
def test_parameter_relevance_of_both_engines_and_auto(name, aggregate):
    model, x = built(name)
    zennit = parameter_relevance(model, x, aggregate=aggregate, engine="zennit")
    auto = parameter_relevance(model, x, aggregate=aggregate, batch_size=3)
    assert zennit.keys() == auto.keys() == prunable_layers(model).keys()
    if GALLERY[name][2] == "zennit":
        assert engine_for(model) == "zennit"
        with pytest.raises(ValueError, match="BatchNorm bn1 does not directly follow a Conv2d or Linear"):
            parameter_relevance(model, x, engine="fast")
    for k in zennit:
        assert_relative(auto[k], zennit[k])
        assert float(zennit[k].abs().sum()) > 0


def conservative(model: nn.Module) -> nn.Module:
    """Non-negative weights, no biases and no BatchNorm shifts: then every rule conserves relevance up to
    its stabiliser (z+ has no neuron with only inhibitory inputs, whose relevance it would drop; no bias
    takes a share), so relevance lost or counted twice at a sum or a branch would show at the input.
    BatchNorm's eps is 0: merged, zennit's BatchNorm still divides by sqrt(1 + eps), which would change the
    logits LRP starts from by 5e-6 per BatchNorm."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data.abs_()
        if getattr(m, "bias", None) is not None:
            m.bias.data.zero_()
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.zero_()
            m.eps = 0.0
    return model


@pytest.mark.parametrize("engine", ["fast", "zennit"])
@pytest.mark.parametrize("name", list(GALLERY))
def test_relevance_is_conserved_through_the_sums(name, engine):
    """The relevance reaching the input equals the start relevance, sample by sample, up to the stabilisers
    (1e-6 in each denominator: 1e-6 relative here), on non-negative inputs to a ``conservative`` model."""
    if engine == "fast" and GALLERY[name][2] == "zennit":
        pytest.skip("the fast engine does not handle this model")
    model, x = built(name)
    model, x = conservative(model), x.abs()
    lrp = lrp_fast if engine == "fast" else lrp_backward
    with torch.no_grad():
        start = start_relevance(model(x)).sum(1)
    assert float(start.min()) > 0
    torch.testing.assert_close(lrp(model, x).flatten(1).sum(1), start, rtol=1e-5, atol=0)


class TinyResidual(nn.Module):
    """x -> fc1 -> ReLU = h1; fc2 -> ReLU = h2; s = h2 + h1; ReLU (module: relevance passes) = r;
    fc3 -> ReLU = a3; fc4(a3 + r): h1 and r each feed a layer and a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act1, self.act2, self.act3, self.act4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.act1(self.fc1(x))
        r = self.act3(self.act2(self.fc2(h1)) + h1)
        return self.fc4(self.act4(self.fc3(r)) + r)


@pytest.mark.parametrize("engine", ["fast", "zennit"])
@pytest.mark.parametrize("composite,first", [("epsilon_plus", "epsilon"), ("epsilon_plus_flat", "flat")])
def test_tiny_residual_mlp_matches_hand_computed_lrp(engine, composite, first):
    """LRP by hand: each sum splits its relevance among its operands; an activation feeding a layer and a
    skip gets both shares, and that total is the rel(a) of the layer it feeds."""
    model = TinyResidual().double()
    fc1, fc2, fc3, fc4 = model.fc1, model.fc2, model.fc3, model.fc4
    x = torch.randn(7, 5, dtype=torch.float64)
    with torch.no_grad():
        h1 = fc1(x).clamp(min=0)
        h2 = fc2(h1).clamp(min=0)
        r = (h2 + h1).clamp(min=0)
        a3 = fc3(r).clamp(min=0)
        s2 = a3 + r
        rel_out = start_relevance(fc4(s2))
        rel_s2 = epsilon_lrp(s2, fc4.weight, fc4.bias, rel_out)
        rel_a3, rel_r_skip = sum_lrp(a3, r, rel_s2)
        rel_r = epsilon_lrp(r, fc3.weight, fc3.bias, rel_a3) + rel_r_skip  # both consumers of r
        rel_h2, rel_h1_skip = sum_lrp(h2, h1, rel_r)  # the ReLU after the sum passes relevance
        rel_h1 = epsilon_lrp(h1, fc2.weight, fc2.bias, rel_h2) + rel_h1_skip
        rule = flat_lrp(x, fc1.weight, rel_h1) if first == "flat" else epsilon_lrp(x, fc1.weight, fc1.bias, rel_h1)
    ends = {"fc1": (rule, rel_h1), "fc2": (rel_h1, rel_h2), "fc3": (rel_r, rel_a3), "fc4": (rel_s2, rel_out)}
    got = parameter_relevance(model, x, composite=composite, engine=engine, aggregate="signed")
    for name, (a, b) in ends.items():
        expected = b.sum(0)[:, None] + a.sum(0)[None, :]
        torch.testing.assert_close(got[f"{name}.weight"], expected, rtol=1e-10, atol=1e-12)


class TinyConvResidual(nn.Module):
    """x -> conv1 -> ReLU = h; conv2 -> ReLU = g; fc(flatten(g + h)), on 1 x 4 x 5 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        return self.fc((torch.relu(self.conv2(h)) + h).flatten(1))


@pytest.mark.parametrize("engine", ["fast", "zennit"])
def test_tiny_conv_residual_matches_hand_computed_lrp_on_unfolded_convolutions(engine):
    """Flat rule on conv1, z+ on conv2 (its input is >= 0), epsilon on fc, each convolution as its explicit
    Toeplitz matrix; the ReLUs are functions, so relevance through them is their gradient."""
    model = TinyConvResidual().double()
    t1, index1, _ = toeplitz(model.conv1, 4, 5)
    t2, _, _ = toeplitz(model.conv2, 4, 5)
    b1, b2 = model.conv1.bias.repeat_interleave(20), model.conv2.bias.repeat_interleave(20)
    x = torch.randn(6, 1, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        a = x.flatten(1)
        z1 = a @ t1.T + b1
        h = z1.clamp(min=0)
        z2 = h @ t2.T + b2
        g = z2.clamp(min=0)
        rel_out = start_relevance(model.fc(g + h))
        rel_s = epsilon_lrp(g + h, model.fc.weight, model.fc.bias, rel_out)
        rel_g, rel_h_skip = sum_lrp(g, h, rel_s)
        rel_z2 = rel_g * (z2 > 0)
        rel_h = zplus_lrp(h, t2, b2, rel_z2) + rel_h_skip
        rel_z1 = rel_h * (z1 > 0)
        rel_x = flat_lrp_connections(a, index1 >= 0, rel_z1)
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if engine == "fast":
        got = lrp_fast(model, x, layer_hooks=lambda n, ra, rb: layers.__setitem__(n, (ra, rb)))
    else:
        got, layers = zennit_lrp(model, x, "epsilon_plus_flat")
    torch.testing.assert_close(got.flatten(1), rel_x, rtol=1e-10, atol=1e-12)
    expected = {"conv1.weight": (rel_x, rel_z1), "conv2.weight": (rel_h, rel_z2), "fc.weight": (rel_s, rel_out)}
    for name, (ra, rb) in expected.items():
        torch.testing.assert_close(layers[name][0].flatten(1), ra, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layers[name][1].flatten(1), rb, rtol=1e-10, atol=1e-12)


def resnet18(classes: int = 5) -> nn.Module:
    """torchvision's ResNet-18, random weights (nothing downloaded), random BatchNorm statistics, float64."""
    return randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=classes)).double().eval()


def zennit_resnet_canonizer(model: nn.Module, x: torch.Tensor):
    """zennit's own way: ``EpsilonPlusFlat`` with ``ResNetCanonizer`` on the model as it is; the input
    relevance and every prunable layer's (rel(a), rel(b)) from tensor hooks."""
    grads: dict[tuple[str, int], torch.Tensor] = {}
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in prunable_layers(model).items():

        def post(mod, args, out, name=name):
            for side, tensor in enumerate((captured.pop(name), out)):
                tensor.register_hook(lambda g, key=(name, side): grads.__setitem__(key, g.detach().clone()))

        def pre(mod, args, name=name):
            captured[name] = args[0]

        handles.append(module.register_forward_pre_hook(pre, prepend=True))
        handles.append(module.register_forward_hook(post))
    xi = x.clone().requires_grad_(True)
    try:
        with EpsilonPlusFlat(canonizers=[ResNetCanonizer()]).context(model) as modified:
            logits = modified(xi)
            (rel_x,) = torch.autograd.grad(logits, xi, start_relevance(logits))
    finally:
        for h in handles:
            h.remove()
    return rel_x, {name: (grads[(name, 0)], grads[(name, 1)]) for name, _ in grads}


@pytest.mark.slow
def test_torchvision_resnet18_matches_zennits_resnet_canonizer():
    """Both engines against zennit's ResNetCanonizer on ResNet-18 at 32 px: input relevance, every layer's
    rel(a) and rel(b), parameter relevance and the FlexRel scores."""
    model, x = resnet18(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    rel_ref, layers_ref = zennit_resnet_canonizer(model, x)
    for engine in (fast_lrp, zennit_lrp):
        rel, layers = engine(model, x, "epsilon_plus_flat")
        assert_relative(rel, rel_ref)
        assert layers.keys() == layers_ref.keys() and len(layers) == 21
        for name, (a, b) in layers_ref.items():
            assert_relative(layers[name][0], a)
            assert_relative(layers[name][1], b)
    fast = pruning_scores(model, x, delta=0.5, engine="fast")
    zennit = pruning_scores(model, x, delta=0.5, engine="zennit")
    for name in zennit:
        assert_relative(fast[name], zennit[name])


def test_torchvision_resnets_qualify_for_the_fast_engine():
    """ResNet-18 and ResNet-50: flat on the stem, z+ on every other convolution (their inputs are ReLU
    outputs or max-pooled ones), epsilon on the head; 8 and 16 sums."""
    for factory, convs, sums in ((torchvision.models.resnet18, 20, 8), (torchvision.models.resnet50, 53, 16)):
        with torch.device("meta"):  # the plan needs the structure, not the values
            plan = make_plan(factory(weights=None))
        assert [op.rule for op in plan if op.rule] == ["flat"] + ["zplus"] * (convs - 1) + ["epsilon"]
        assert sum(op.kind == "sum" for op in plan) == sums


class Broadcast(nn.Module):
    """A sum whose operands differ in shape (a per-channel term added to a map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gap, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Linear(2 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc((y + self.gap(y)).flatten(1))


@pytest.mark.parametrize("engine", ["fast", "zennit"])
def test_a_sum_of_tensors_of_different_shapes_is_refused(engine):
    with pytest.raises(ValueError, match=r"adds tensors of shapes \(2, 2, 4, 4\) and \(2, 2, 1, 1\).*broadcasting"):
        parameter_relevance(Broadcast(), torch.randn(2, 1, 4, 4), engine=engine)


@pytest.mark.parametrize("engine", ["fast", "zennit"])
def test_model_comes_back_untouched(engine):
    model, x = built("torchvision BasicBlock and Bottleneck")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parameter_relevance(model, x, engine=engine)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert all(p.grad is None for p in m.parameters(recurse=False))
