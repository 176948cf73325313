"""Bit packing and Rice codes: the torch path (what runs on a GPU) and the numpy path (CPU) agree bit
for bit, and whole models encode to the same bytes and decode to the same tensors either way."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from flexrel_core import bitcodes
from flexrel_core.encoding import decode_sparse, encode_sparse, encoded_size
from flexrel_core.masks import MASK_BUFFER, get_masks, prune
from flexrel_core.models import build_model


@pytest.fixture()
def torch_path(monkeypatch):
    """Make every primitive take its torch branch (the one a GPU tensor takes) on the CPU."""
    monkeypatch.setattr(bitcodes, "host_array", lambda t: None)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 64, 1001])
def test_pack_and_unpack_agree_with_numpy(length):
    bits = torch.rand(length, generator=torch.Generator().manual_seed(length)) < 0.3
    packed = bitcodes._pack_torch(bits)
    assert torch.equal(packed, torch.from_numpy(np.packbits(bits.numpy())))
    assert torch.equal(bitcodes._unpack_torch(packed, length).bool(), bits)
    assert torch.equal(bitcodes.unpack_bits(packed, length).bool(), bits)


def random_positions(seed: int, n: int, density: float) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=torch.Generator().manual_seed(seed)) < density).squeeze(1)


@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.3, 0.44])
def test_rice_code_is_the_same_on_both_paths(density, monkeypatch):
    positions = random_positions(1, 20000, density)
    cost = bitcodes.rice_cost(positions)
    u, code = bitcodes.rice_encode(positions, cost[1])
    monkeypatch.setattr(bitcodes, "host_array", lambda t: None)
    assert bitcodes.rice_cost(positions) == cost
    u_t, code_t = bitcodes.rice_encode(positions, cost[1])
    assert (u_t, code_t.tolist()) == (u, code.tolist())
    assert torch.equal(bitcodes.rice_decode(code_t, len(positions), u, cost[1], 20000), positions)


def test_corrupted_rice_code_refused_on_the_torch_path(torch_path):
    positions = random_positions(2, 5000, 0.05)
    _, r = bitcodes.rice_cost(positions)
    u, code = bitcodes.rice_encode(positions, r)
    with pytest.raises(ValueError, match="announced number"):
        bitcodes.rice_decode(code, len(positions) - 1, u, r, 5000)
    with pytest.raises(ValueError, match="past the end"):
        bitcodes.rice_decode(code, len(positions), u, r, int(positions[-1]))


def models() -> dict[str, nn.Module]:
    """Masked models covering every layout: all kept, dense (one weight pruned), Rice (kept and
    pruned), bitmap, values at pruned positions, kept exact zeros, bfloat16 (torch path on both)."""
    torch.manual_seed(0)
    out = {}
    one = 1 / sum(m.numel() for m in get_masks(build_model("digits_cnn")).values())  # a single weight pruned
    for name, amount in [("digits_cnn", a) for a in (0.0, one, 0.1, 0.5, 0.9, 0.999)] + [("vgg_small", 0.9)]:
        model = build_model(name, **({"in_channels": 3, "image_size": 8} if name == "vgg_small" else {}))
        prune(model, {n: torch.rand(m.shape) for n, m in get_masks(model).items()}, amount)
        out[f"{name}-{amount:.4g}"] = model
    dirty = build_model("digits_cnn")
    prune(dirty, {n: torch.rand(m.shape) for n, m in get_masks(dirty).items()}, 0.7)
    with torch.no_grad():
        dirty.classifier[1].weight.add_(1.0)  # pruned positions no longer zero: all values travel
        first = dirty.features[0]
        first.weight[getattr(first, MASK_BUFFER)] = 0.0  # kept weights that are exactly zero
    out["dirty"] = dirty
    bf16 = build_model("digits_cnn").to(torch.bfloat16)
    prune(bf16, {n: torch.rand(m.shape) for n, m in get_masks(bf16).items()}, 0.8)
    out["bf16"] = bf16
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor (tells +0.0 from -0.0)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def fresh_copy(model: nn.Module) -> nn.Module:
    """A copy with other weights and no masks: decoding must overwrite everything."""
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        m._buffers.pop(MASK_BUFFER, None)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    return fresh


@pytest.mark.parametrize("half", [False, True])
def test_torch_path_writes_the_same_bytes_and_reads_them_back(half, monkeypatch):
    cases = models()
    blobs = {name: encode_sparse(model, half=half) for name, model in cases.items()}
    decoded = {name: decode_sparse(blobs[name], fresh_copy(model)).state_dict() for name, model in cases.items()}
    monkeypatch.setattr(bitcodes, "host_array", lambda t: None)
    for name, model in cases.items():
        assert encode_sparse(model, half=half) == blobs[name], name
        assert encoded_size(model, half=half) == len(blobs[name]), name
        state = decode_sparse(blobs[name], fresh_copy(model)).state_dict()
        assert state.keys() == decoded[name].keys()
        for k, v in state.items():
            assert v.dtype == decoded[name][k].dtype and torch.equal(bits(v), bits(decoded[name][k])), (name, k)
