"""Parameter relevance against independent float64 computations: hand-run LRP, explicit Toeplitz convolutions."""

from __future__ import annotations

import pytest
import torch
from lrp_reference import epsilon_lrp, flat_lrp, toeplitz, toeplitz_weight_relevance
from nets import Reused
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.types import Activation, Convolution

from flexrel_core import lrp_backward, parameter_relevance, prune, pruning_scores
from flexrel_core.relevance import conv_weight_relevance


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()


def reference_mlp(model: nn.Sequential, x: torch.Tensor, first: str, targets=None):
    """Activation relevances of every layer by hand, then rel(w_jk) = sum_i [phi(R_a_ik) + phi(R_b_ij)]."""
    lin = [model[0], model[2], model[4]]
    with torch.no_grad():
        acts = [x]
        for i, layer in enumerate(lin):
            z = acts[-1] @ layer.weight.T + layer.bias
            acts.append(z.clamp(min=0) if i < 2 else z)
        logits = acts[-1]
        t = logits.argmax(1) if targets is None else targets
        rel = [None] * 4
        rel[3] = torch.zeros_like(logits).scatter(1, t[:, None], 1.0) * logits
        for i in (2, 1, 0):
            if i == 0 and first == "flat":
                rel[i] = flat_lrp(acts[i], lin[i].weight, rel[i + 1])
            else:
                rel[i] = epsilon_lrp(acts[i], lin[i].weight, lin[i].bias, rel[i + 1])
    return rel


@pytest.mark.parametrize("composite,first", [("epsilon_plus", "epsilon"), ("epsilon_plus_flat", "flat")])
@pytest.mark.parametrize("aggregate", ["abs", "signed", "positive"])
def test_linear_relevance_matches_hand_computed_lrp(composite, first, aggregate):
    model = mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    phi = {"abs": torch.abs, "signed": lambda t: t, "positive": lambda t: t.clamp(min=0)}[aggregate]
    rel = reference_mlp(model, x, first)
    got = parameter_relevance(model, x, composite=composite, aggregate=aggregate)
    for layer, name in enumerate(["0.weight", "2.weight", "4.weight"]):
        expected = phi(rel[layer + 1]).sum(0)[:, None] + phi(rel[layer]).sum(0)[None, :]
        torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-12)


def test_hand_computed_example():
    """One Linear layer, one sample, numbers checked by hand.

    w = [[1, 2]], b = 0, a = [1, 1] -> z = 3 = logit; R_b = 3; epsilon rule: R_a = a * w * R_b / z = [1, 2].
    rel(w_00) = |R_a0| + |R_b0| = 1 + 3 = 4; rel(w_01) = 2 + 3 = 5. (A 1-output net is its own "first" layer,
    so this uses the plain epsilon composite.)
    """
    layer = nn.Linear(2, 1, bias=False).double()
    layer.weight.data = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    got = parameter_relevance(nn.Sequential(layer), torch.ones(1, 2, dtype=torch.float64), composite="epsilon_plus")
    torch.testing.assert_close(got["0.weight"], torch.tensor([[4.0, 5.0]], dtype=torch.float64), rtol=0, atol=1e-6)


def test_true_label_targets_change_start():
    model = mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 1, 0, 1])
    rel = reference_mlp(model, x, "epsilon", targets)
    got = parameter_relevance(model, x, targets, composite="epsilon_plus")
    expected = rel[3].abs().sum(0)[:, None] + rel[2].abs().sum(0)[None, :]
    torch.testing.assert_close(got["4.weight"], expected)


def test_batching_gives_the_same_sum():
    model = mlp()
    x = torch.randn(9, 5, dtype=torch.float64)
    whole = parameter_relevance(model, x)
    split = parameter_relevance(model, x, batch_size=4)
    for name in whole:
        torch.testing.assert_close(whole[name], split[name])


def epsilon_everywhere() -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon()), (nn.Linear, Epsilon())])


CONV_GEOMETRIES = [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1),
    dict(in_channels=2, out_channels=2, kernel_size=2, dilation=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1, stride=(1, 2)),
    dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding="same"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"),
    dict(in_channels=3, out_channels=3, kernel_size=3, groups=3, padding=2, dilation=2),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_toeplitz_reference_is_the_convolution(geometry):
    conv = nn.Conv2d(**geometry, bias=False).double()
    x = torch.randn(1, conv.in_channels, 6, 7, dtype=torch.float64)
    t, _, (oh, ow) = toeplitz(conv, 6, 7)
    torch.testing.assert_close(t @ x.flatten(), conv(x).flatten())


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv_aggregation_equals_unfolded_fc(geometry):
    """conv_weight_relevance == summing A_k + B_j over every Toeplitz connection of each shared weight."""
    conv = nn.Conv2d(**geometry).double()
    t, index, (oh, ow) = toeplitz(conv, 6, 7)
    a_sum = torch.rand(conv.in_channels, 6, 7, dtype=torch.float64)
    b_sum = torch.rand(conv.out_channels, oh, ow, dtype=torch.float64)
    expected = toeplitz_weight_relevance(index, a_sum, b_sum, conv.weight.numel()).view_as(conv.weight)
    torch.testing.assert_close(conv_weight_relevance(conv, a_sum, b_sum), expected)


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES[:4])
def test_conv_relevance_end_to_end_equals_toeplitz_lrp(geometry):
    """Conv -> ReLU -> Linear with the epsilon rule everywhere: parameter relevance from zennit equals LRP
    run by hand through the conv's explicit Toeplitz matrix, aggregated over shared weights."""
    conv = nn.Conv2d(**geometry).double()
    t, index, (oh, ow) = toeplitz(conv, 6, 7)
    head = nn.Linear(conv.out_channels * oh * ow, 3).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    x = torch.randn(5, conv.in_channels, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        a = x.flatten(1)
        bias = conv.bias.repeat_interleave(oh * ow)
        b = a @ t.T + bias
        h = b.clamp(min=0)
        logits = h @ head.weight.T + head.bias
        r_out = torch.zeros_like(logits).scatter(1, logits.argmax(1)[:, None], 1.0) * logits
        r_b = epsilon_lrp(h, head.weight, head.bias, r_out)  # ReLU passes relevance unchanged
        r_a = epsilon_lrp(a, t, bias, r_b)
    got = parameter_relevance(model, x, composite=epsilon_everywhere())
    expected = toeplitz_weight_relevance(index, r_a.abs().sum(0), r_b.abs().sum(0), conv.weight.numel())
    torch.testing.assert_close(got["0.weight"], expected.view_as(conv.weight), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got["3.weight"], r_out.abs().sum(0)[:, None] + r_b.abs().sum(0)[None, :])


def test_model_comes_back_unchanged_including_pruned_and_batchnorm():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(8, 1, 5, 5)
    scores = pruning_scores(model, method="magnitude")
    prune(model, scores, 0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parameter_relevance(model, x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert all(p.grad is None for p in m.parameters(recurse=False))


def test_batchnorm_is_merged_before_lrp():
    """With BN in eval mode, relevance equals that of the same net with BN folded into the conv by hand."""
    conv, bn = nn.Conv2d(1, 3, 3, padding=1).double(), nn.BatchNorm2d(3).double()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    head = nn.Linear(3 * 16, 2).double()
    with_bn = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), head).eval()
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    folded = nn.Conv2d(1, 3, 3, padding=1).double()
    folded.weight.data = conv.weight * scale[:, None, None, None]
    folded.bias.data = (conv.bias - bn.running_mean) * scale + bn.bias
    plain = nn.Sequential(folded, nn.ReLU(), nn.Flatten(), head)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    got, expected = parameter_relevance(with_bn, x), parameter_relevance(plain, x)
    # zennit's merged BatchNorm is not an exact identity: it still divides by sqrt(1 + eps), eps = 1e-5,
    # a relative 5e-6 (zennit/canonizers.py, merge_batch_norm). Anything beyond that would be a real error.
    torch.testing.assert_close(got["0.weight"], expected["0.weight"], rtol=2e-5, atol=0)
    torch.testing.assert_close(got["4.weight"], expected["3.weight"], rtol=2e-5, atol=0)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_empty_and_misshapen_inputs():
    with pytest.raises(ValueError, match="non-empty batch"):
        parameter_relevance(_net(), torch.zeros(0, 1, 6, 6))
    with pytest.raises(ValueError, match=r"expecting \(n, 1, H, W\)"):
        parameter_relevance(_net(), torch.randn(2, 3, 6, 6))
    with pytest.raises(ValueError, match="do not fit the model"):
        parameter_relevance(_net(), torch.randn(2, 1, 9, 9))
    with pytest.raises(TypeError, match="torch.Tensor"):
        parameter_relevance(_net(), [[1.0]])


def test_targets_out_of_range():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        parameter_relevance(_net(), torch.randn(2, 1, 6, 6), torch.tensor([0, 7]))


def _raise_cuda_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _raise_cpu_oom(*args, **kwargs):
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 21474836480 bytes.")


@pytest.mark.parametrize("engine", ["fast", "zennit"])
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_says_so_and_suggests_a_smaller_batch(monkeypatch, engine, where):
    """Running out of memory is not a shape error: the message names memory and a smaller batch_size."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    if where == "forward":
        monkeypatch.setattr(torch.nn.functional, "conv2d", _raise_cuda_oom)
    elif engine == "zennit":
        monkeypatch.setattr(torch.autograd, "grad", _raise_cpu_oom)
    else:
        monkeypatch.setattr(torch.Tensor, "scatter_add_", _raise_cpu_oom)
    with pytest.raises(torch.OutOfMemoryError, match=r"ran out of CPU memory on a batch of 6 samples.*batch_size=3"):
        parameter_relevance(model, torch.randn(10, 1, 6, 6), batch_size=6, engine=engine)


@pytest.mark.parametrize("engine", ["fast", "zennit"])
def test_works_inside_no_grad(engine):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    expected = parameter_relevance(model, x, engine=engine)
    with torch.no_grad():
        got = parameter_relevance(model, x, engine=engine)
    for name in expected:
        assert torch.equal(got[name], expected[name])


def test_engine_for_names_what_auto_runs():
    from flexrel_core.relevance import engine_for

    assert engine_for(_net()) == "fast"
    assert engine_for(_net(), "epsilon_alpha2_beta1_flat") == "zennit"  # a composite the fast engine does not have


@pytest.mark.parametrize("engine", ["auto", "fast", "zennit"])
@pytest.mark.parametrize("composite,first", [("epsilon_plus", "epsilon"), ("epsilon_plus_flat", "flat")])
def test_one_relu_module_after_every_layer_matches_hand_computed_lrp(engine, composite, first):
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(5, 4), relu, nn.Linear(4, 3), relu, nn.Linear(3, 2)).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    rel = reference_mlp(model, x, first)
    got = parameter_relevance(model, x, composite=composite, engine=engine)
    for layer, name in enumerate(["0.weight", "2.weight", "4.weight"]):
        expected = rel[layer + 1].abs().sum(0)[:, None] + rel[layer].abs().sum(0)[None, :]
        torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-12)


REUSED_POOLS = {"maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(3, stride=1, padding=1), "none": nn.Identity()}


@pytest.mark.parametrize("pool", REUSED_POOLS.values(), ids=REUSED_POOLS.keys())
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus"])
def test_reused_activation_and_pooling_equal_one_module_per_call(pool, composite):
    """A reused ReLU and pooling module give the relevance of the unrolled network (zennit on it is the
    reference); reused average pooling runs on the fast engine only, and engine='zennit' says why."""
    from flexrel_core.relevance import engine_for

    torch.manual_seed(0)
    model = Reused(pool).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    expected = list(parameter_relevance(model.unrolled(), x, composite=composite, engine="zennit").values())
    engines = ["auto", "fast"] + ([] if isinstance(pool, nn.AvgPool2d) else ["zennit"])
    for engine in engines:
        got = list(parameter_relevance(model, x, composite=composite, engine=engine).values())
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12 * float(e.abs().max()))
    assert engine_for(model, composite) == "fast"
    if isinstance(pool, nn.AvgPool2d):
        why = r"engine='zennit' cannot handle Reused: pool \(AvgPool2d, rule Norm\) is called at several.*engine='fast'"
        with pytest.raises(ValueError, match=why):
            parameter_relevance(model, x, composite=composite, engine="zennit")
        with pytest.raises(ValueError, match=why):
            lrp_backward(model, x, composite=composite)


def test_reused_average_pooling_under_a_composite_only_zennit_has_is_refused_by_auto():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"neither relevance engine handles Reused: zennit because pool .*composite"):
        parameter_relevance(Reused(nn.AvgPool2d(3, stride=1, padding=1)), x, composite="epsilon_alpha2_beta1")
    model = Reused(nn.MaxPool2d(2)).double()  # max pooling has no zennit rule: reused, it is fine there
    x = x.double()
    got = parameter_relevance(model, x, composite="epsilon_alpha2_beta1")
    expected = parameter_relevance(model.unrolled(), x, composite="epsilon_alpha2_beta1")
    for g, e in zip(got.values(), expected.values(), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
