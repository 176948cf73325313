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
