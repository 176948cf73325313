"""Data-aware baselines against independent float64 computations: Wanda's input norms and Taylor's
gradients by hand for dense layers and through the explicit Toeplitz (unfolded) form of
convolutions; random scores seeded and reproducible; the scores through ``pruning_scores``
(FlexRel-with-Taylor blended by hand), refusals, and models that leave as they came."""

from __future__ import annotations

import pytest
import torch
from lrp_reference import toeplitz, toeplitz_weight_relevance
from nets import small_cnn
from test_relevance import CONV_GEOMETRIES
from torch import nn

import flexrel_core as fr
from flexrel_core import data_scores
from flexrel_core.scores import ALL_METHODS, pruning_scores


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()


def test_wanda_of_dense_layers_is_weight_times_input_norm_by_hand():
    model = _mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    h = (x @ model[0].weight.T + model[0].bias).clamp(min=0)
    got = data_scores.wanda(model, x)
    torch.testing.assert_close(got["0.weight"], model[0].weight.abs() * x.pow(2).sum(0).sqrt()[None, :])
    torch.testing.assert_close(got["2.weight"], model[2].weight.abs() * h.pow(2).sum(0).sqrt()[None, :])
    assert all(s.dtype == torch.float64 for s in got.values())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's note on speed
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_wanda_of_a_convolution_equals_its_toeplitz_form(geometry):
    """‖X_(c,u,v)‖² summed over every connection the shared weight stands for in the explicit
    Toeplitz matrix (taps in the padding connect to nothing), over samples and output positions."""
    conv = nn.Conv2d(**geometry).double()
    t, index, (oh, ow) = toeplitz(conv, 6, 7)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(conv.out_channels * oh * ow, 3).double())
    x = torch.randn(5, conv.in_channels, 6, 7, dtype=torch.float64)
    squares = x.pow(2).sum(0)
    zeros = torch.zeros(conv.out_channels, oh, ow, dtype=torch.float64)
    norm = toeplitz_weight_relevance(index, squares, zeros, conv.weight.numel()).view_as(conv.weight).sqrt()
    got = data_scores.wanda(model, x, batch_size=2)
    torch.testing.assert_close(got["0.weight"], conv.weight.abs() * norm)


def test_taylor_of_dense_layers_is_the_hand_computed_cross_entropy_gradient():
    model = _mlp()
    x = torch.randn(9, 5, dtype=torch.float64)
    w1, b1, w2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    with torch.no_grad():
        pre = x @ w1.T + b1
        h = pre.clamp(min=0)
        logits = h @ w2.T + b2
        for targets in (None, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])):
            t = logits.argmax(1) if targets is None else targets
            d_logits = (logits.softmax(1) - torch.eye(3, dtype=torch.float64)[t]) / len(x)
            g2 = d_logits.T @ h
            g1 = ((d_logits @ w2) * (pre > 0)).T @ x
            got = data_scores.taylor(model, x, targets, batch_size=4)
            torch.testing.assert_close(got["2.weight"], (w2 * g2).abs())
            torch.testing.assert_close(got["0.weight"], (w1 * g1).abs())


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES[:4])
def test_taylor_of_a_convolution_equals_the_gradient_through_its_toeplitz_form(geometry):
    conv = nn.Conv2d(**geometry).double()
    t, index, (oh, ow) = toeplitz(conv, 6, 7)
    head = nn.Linear(conv.out_channels * oh * ow, 3).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    x = torch.randn(6, conv.in_channels, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        a = x.flatten(1)
        b = a @ t.T + conv.bias.repeat_interleave(oh * ow)
        logits = b.clamp(min=0) @ head.weight.T + head.bias
        d_logits = (logits.softmax(1) - torch.eye(3, dtype=torch.float64)[logits.argmax(1)]) / len(x)
        d_b = (d_logits @ head.weight) * (b > 0)
        g_t = d_b.T @ a  # gradient of every Toeplitz entry; a shared weight gets the sum over its entries
        rows, cols = torch.nonzero(index >= 0, as_tuple=True)
        grad = torch.zeros(conv.weight.numel(), dtype=torch.float64).index_add_(0, index[rows, cols], g_t[rows, cols])
    got = data_scores.taylor(model, x)
    torch.testing.assert_close(got["0.weight"], (conv.weight * grad.view_as(conv.weight)).abs())


def test_random_scores_are_seeded_uniform_and_shaped_like_the_weights():
    model = small_cnn()
    a, b = data_scores.random_scores(model, seed=3), data_scores.random_scores(model, seed=3)
    c = data_scores.random_scores(model, seed=4)
    for name, m in fr.prunable_layers(model).items():
        assert a[name].shape == m.weight.shape and a[name].dtype == torch.float64
        assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
        assert a[name].min() >= 0 and a[name].max() < 1
    flat = torch.cat([s.flatten() for s in a.values()])
    assert abs(float(flat.mean()) - 0.5) < 0.05  # uniform on [0, 1): mean 1/2 (±0.05 with ~1k values)


def test_scores_are_independent_of_batching_and_leave_the_model_as_it_came():
    model = small_cnn().train()
    model[0].weight.requires_grad_(False)
    x = torch.randn(10, 1, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for compute in (data_scores.wanda, data_scores.taylor):
        whole, batched = compute(model, x), compute(model, x, batch_size=3)
        for name in whole:
            torch.testing.assert_close(whole[name], batched[name])
    assert model.training and not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():  # gradients are taken even inside no_grad
        torch.testing.assert_close(data_scores.taylor(model, x)["5.weight"], whole["5.weight"])


def test_dropout_is_off_while_scoring():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2)).train()
    x = torch.randn(8, 4)
    first, second = data_scores.wanda(model, x), data_scores.wanda(model, x)
    assert torch.equal(first["3.weight"], second["3.weight"])


def test_pruning_scores_gives_every_method_and_flexrel_taylor_is_the_blend_by_hand():
    model = small_cnn()
    x = torch.randn(12, 1, 6, 6)
    t = data_scores.taylor(model, x)
    assert set(ALL_METHODS) >= {"wanda", "taylor", "random", "flexrel_taylor"}
    for name, s in pruning_scores(model, x, method="wanda").items():
        torch.testing.assert_close(s, data_scores.wanda(model, x)[name])
    for name, s in pruning_scores(model, x, method="taylor").items():
        torch.testing.assert_close(s, t[name])
    rand = pruning_scores(model, method="random", seed=5)
    assert all(torch.equal(rand[n], s) for n, s in data_scores.random_scores(model, 5).items())
    weights = {n: m.weight.detach().double().abs() for n, m in fr.prunable_layers(model).items()}
    m_all, t_all = torch.cat([w.flatten() for w in weights.values()]), torch.cat([s.flatten() for s in t.values()])
    blend = pruning_scores(model, x, method="flexrel_taylor", delta=0.3)
    from_signal = pruning_scores(model, method="flexrel_taylor", delta=0.3, signal=t)
    for name in weights:
        m_norm = (weights[name] - m_all.min()) / (m_all.max() - m_all.min())
        t_norm = (t[name] - t_all.min()) / (t_all.max() - t_all.min())
        torch.testing.assert_close(blend[name], 0.7 * m_norm + 0.3 * t_norm)
        torch.testing.assert_close(from_signal[name], blend[name])
    labels = torch.arange(12) % 5
    assert not torch.equal(pruning_scores(model, x, labels, method="taylor")["5.weight"], t["5.weight"])


def test_bad_methods_and_missing_inputs_are_refused_with_the_valid_choices():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"unknown method 'snip'.*'wanda', 'taylor', 'random', 'flexrel_taylor'"):
        pruning_scores(model, method="snip")
    with pytest.raises(ValueError, match="needs inference `inputs` or a precomputed `signal`"):
        pruning_scores(model, method="wanda")
    with pytest.raises(ValueError, match=r"taylor\['0.weight'\] has shape"):
        pruning_scores(model, method="taylor", signal={n: torch.ones(2) for n in fr.prunable_layers(model)})
    with pytest.raises(ValueError, match="one class per sample"):
        data_scores.taylor(model, torch.randn(4, 1, 6, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data_scores.wanda(model, torch.randn(4, 1, 6, 6), batch_size=0)
