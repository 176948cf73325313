"""CUDA: the same relevance, scores and masks on the GPU as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from flexrel_core import get_masks, parameter_relevance, prunable_layers, prune, pruning_scores
from flexrel_core.models import build_model
from flexrel_core.training import select_device, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("name,shape", [("digits_cnn", (64, 1, 8, 8)), ("vgg_small", (16, 3, 32, 32))])
def test_gpu_matches_cpu(name, shape):
    torch.manual_seed(0)
    kwargs = {} if name == "digits_cnn" else dict(in_channels=3, image_size=32, batch_norm=True)
    model = build_model(name, **kwargs).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    cpu = parameter_relevance(model, x)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = parameter_relevance(gpu_model, x.cuda())
    for n in cpu:
        assert gpu[n].is_cuda
        torch.testing.assert_close(gpu[n].cpu(), cpu[n], rtol=1e-9, atol=1e-9)
    masks_cpu = prune(model, pruning_scores(model, relevance=cpu, delta=0.5), 0.8)
    masks_gpu = prune(gpu_model, pruning_scores(gpu_model, relevance=gpu, delta=0.5), 0.8)
    assert all(torch.equal(masks_cpu[n], masks_gpu[n].cpu()) for n in masks_cpu)


def test_fine_tuning_on_gpu_keeps_masks():
    assert select_device("auto").type == "cuda"
    model = build_model("digits_cnn").cuda()
    data = torch.utils.data.TensorDataset(torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,)))
    prune(model, pruning_scores(model, method="magnitude"), 0.9)
    train(model, data, epochs=2, device="cuda")
    masks = get_masks(model)
    for n, m in prunable_layers(model).items():
        assert (m.weight[~masks[n]] == 0).all()


# --------------------------------------------------------------------------- pruning and encoding on the GPU
def tied_scores(model, dtype, levels=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.randint(0, levels, m.weight.shape, generator=gen).to(dtype) for n, m in prunable_layers(model).items()
    }


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prune_on_the_gpu_gives_the_cpu_masks(scope, dtype):
    """Small and past the sampling threshold, with ties and an earlier cut: the same masks, on the GPU."""
    for model in (build_model("digits_cnn"), torch.nn.Sequential(torch.nn.Linear(700, 600), torch.nn.Linear(600, 10))):
        gpu_model = copy.deepcopy(model).cuda()
        for step, amount in enumerate((0.3, 0.9)):
            scores = tied_scores(model, dtype, levels=50 + 5000 * step, seed=step)
            cpu = prune(model, scores, amount, scope=scope)
            gpu = prune(gpu_model, {n: s.cuda() for n, s in scores.items()}, amount, scope=scope)
            assert all(gpu[n].is_cuda and torch.equal(gpu[n].cpu(), cpu[n]) for n in cpu)


def test_gpu_encoding_writes_the_cpu_bytes_and_decodes_on_the_gpu():
    from flexrel_core.encoding import MaskCodeCache, decode_sparse, encode_sparse, encoded_size

    torch.manual_seed(0)
    for amount in (0.0, 0.05, 0.5, 0.9, 0.999):
        model = build_model("vgg_small", in_channels=3, image_size=16, batch_norm=True)
        prune(model, {n: torch.rand(m.shape) for n, m in get_masks(model).items()}, amount)
        gpu_model = copy.deepcopy(model).cuda()
        cache = MaskCodeCache()
        for half in (False, True):
            blob = encode_sparse(model, half=half)
            assert encode_sparse(gpu_model, half=half) == blob
            assert encoded_size(gpu_model, half=half, cache=cache) == len(blob)
            on_gpu = decode_sparse(blob, copy.deepcopy(gpu_model))
            on_cpu = decode_sparse(blob, copy.deepcopy(model))
            for (k, a), b in zip(on_gpu.state_dict().items(), on_cpu.state_dict().values(), strict=True):
                assert a.is_cuda and torch.equal(a.cpu(), b), (amount, half, k)


def test_bit_codes_on_the_gpu_match_numpy():
    import numpy as np

    from flexrel_core import bitcodes

    gen = torch.Generator().manual_seed(0)
    bits = torch.rand(10_001, generator=gen) < 0.3
    assert torch.equal(bitcodes.pack_bits(bits.cuda()).cpu(), torch.from_numpy(np.packbits(bits.numpy())))
    positions = torch.nonzero(torch.rand(200_000, generator=gen) < 0.05).squeeze(1)
    _, r = bitcodes.rice_cost(positions)
    assert bitcodes.rice_cost(positions.cuda()) == bitcodes.rice_cost(positions)
    u, code = bitcodes.rice_encode(positions, r)
    u_gpu, code_gpu = bitcodes.rice_encode(positions.cuda(), r)
    assert u_gpu == u and torch.equal(code_gpu.cpu(), code)
    assert torch.equal(bitcodes.rice_decode(code_gpu, len(positions), u, r, 200_000).cpu(), positions)


def test_masks_live_on_the_weights_device_wherever_selection_runs():
    model = build_model("digits_cnn")
    scores = tied_scores(model, torch.float32, levels=30)
    expected = prune(copy.deepcopy(model), scores, 0.6)
    on_cpu = prune(copy.deepcopy(model), {n: s.cuda() for n, s in scores.items()}, 0.6)  # selected on the GPU
    on_gpu = prune(copy.deepcopy(model).cuda(), scores, 0.6, device="cuda")  # CPU scores, selected on the GPU
    for n in expected:
        assert not on_cpu[n].is_cuda and torch.equal(on_cpu[n], expected[n])
        assert on_gpu[n].is_cuda and torch.equal(on_gpu[n].cpu(), expected[n])
