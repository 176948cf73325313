"""Sparse model encoding: exact round trip, size against the information bound and the dense
encoding, refusal of truncated / corrupted / foreign blobs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from flexrel_core.encoding import (
    HEADER_BYTES,
    MaskCodeCache,
    decode_sparse,
    dense_size_bytes,
    encode_sparse,
    encoded_size,
    information_bound_bits,
    layer_modes,
    rice_cost,
    rice_decode,
    rice_encode,
)
from flexrel_core.masks import MASK_BUFFER, apply_masks, get_masks, prune
from flexrel_core.models import build_model
from flexrel_core.scores import pruning_scores


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))


def cnn_bn() -> nn.Module:
    model = build_model("digits_cnn", batch_norm=True)
    for m in model.modules():  # non-trivial BatchNorm buffers, so a round trip has something to check
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(17)
    return model


def small_vgg() -> nn.Module:
    return build_model("vgg_small", in_channels=3, image_size=16)


BUILDERS = {"mlp": mlp, "cnn_bn": cnn_bn, "vgg_small": small_vgg}


def pruned(builder, amount: float | None, seed: int = 0, random_mask: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = builder()
    if amount is not None:
        scores = pruning_scores(model, method="magnitude", normalize="global")
        if random_mask:
            scores = {k: torch.rand_like(v) for k, v in scores.items()}
        prune(model, scores, amount)
    return model


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor (pruned weights are +0.0: apply_masks never leaves -0.0)."""
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(bits(sa[k]), bits(sb[k])), k
    for (na, ma), (nb, mb) in zip(get_masks(a).items(), get_masks(b).items(), strict=True):
        assert na == nb and torch.equal(ma, mb)


def one_kept(builder) -> float:
    n = sum(p.numel() for name, p in builder().named_parameters() if name.endswith("weight") and p.dim() > 1)
    return (n - 1) / n


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("amount", [None, 0.0, 0.5, 0.9, 0.99, "one"])
def test_round_trip_is_exact(name, amount):
    builder = BUILDERS[name]
    amount = one_kept(builder) if amount == "one" else amount
    model = pruned(builder, amount)
    blob = encode_sparse(model)
    torch.manual_seed(123)  # a differently initialised target: everything must be overwritten
    target = builder()
    decoded = decode_sparse(blob, target)
    assert decoded is target
    assert_identical(model, target)
    if amount is not None:
        kept = sum(int(m.sum()) for m in get_masks(target).values())
        total = sum(m.numel() for m in get_masks(target).values())
        assert kept == total - round(amount * total)


def test_decoding_a_dense_blob_removes_masks_and_kept_zeros_survive():
    model = pruned(mlp, 0.5)
    dense = mlp()
    decode_sparse(encode_sparse(dense), model)
    assert not any(hasattr(m, MASK_BUFFER) for m in model.modules() if isinstance(m, nn.Linear))
    # a kept weight that is exactly zero keeps its place in the mask
    src = pruned(mlp, 0.5)
    with torch.no_grad():
        layer = src[1]
        idx = torch.nonzero(getattr(layer, MASK_BUFFER))[0]
        layer.weight[tuple(idx)] = 0.0
    out = decode_sparse(encode_sparse(src), mlp())
    assert_identical(src, out)


def test_half_precision_values():
    model = pruned(small_vgg, 0.9)
    blob16, blob32 = encode_sparse(model, half=True), encode_sparse(model)
    assert len(blob16) < 0.6 * len(blob32)
    out = decode_sparse(blob16, small_vgg())
    for (name, p), q in zip(model.state_dict().items(), out.state_dict().values(), strict=True):
        expected = p.half().to(p.dtype) if p.is_floating_point() else p
        assert torch.equal(q, expected), name
    assert all(torch.equal(a, b) for a, b in zip(get_masks(model).values(), get_masks(out).values(), strict=True))


@pytest.mark.parametrize("positions", [[], [0], [9], [0, 1, 2, 3], [3, 4, 100, 101, 999], list(range(0, 1000, 7))])
def test_rice_code_round_trip(positions):
    pos = np.array(positions, dtype=np.int64)
    bits_, r = rice_cost(pos)
    u, code = rice_encode(pos, r)
    assert u + len(pos) * r == bits_ and len(code) == (bits_ + 7) // 8
    assert np.array_equal(rice_decode(code, len(pos), u, r, 1000), pos)


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("random_mask", [True, False])
def test_size_within_ten_percent_of_bound(sparsity, random_mask):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 256))
    scores = pruning_scores(model, method="magnitude")
    if random_mask:
        scores = {k: torch.rand_like(v) for k, v in scores.items()}
    prune(model, scores, sparsity)
    size_bits = 8 * len(encode_sparse(model))
    bound = information_bound_bits(model)
    assert bound <= size_bits <= 1.10 * bound


@pytest.mark.parametrize(
    ("name", "amount"),
    [(n, a) for n in ("mlp", "cnn_bn") for a in (None, 0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)]
    + [("vgg_small", a) for a in (0.0, 0.01, 0.5, 0.99)],
)
def test_never_larger_than_dense(name, amount):
    model = pruned(BUILDERS[name], amount, random_mask=True)
    size = len(encode_sparse(model))
    assert size <= dense_size_bytes(model)
    assert len(encode_sparse(model, half=True)) <= dense_size_bytes(model, half=True)
    if amount in (None, 0.0):
        assert size == dense_size_bytes(model)


def test_layout_follows_density():
    model = pruned(lambda: nn.Sequential(nn.Linear(500, 400)), 0.5, random_mask=True)
    assert layer_modes(model) == {"0.weight": "bitmap"}
    model = pruned(lambda: nn.Sequential(nn.Linear(500, 400)), 0.95, random_mask=True)
    assert layer_modes(model) == {"0.weight": "rice_kept"}
    model = pruned(lambda: nn.Sequential(nn.Linear(500, 400)), 0.05, random_mask=True)
    assert layer_modes(model) == {"0.weight": "rice_pruned"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("amount", [None, 0.0, 0.01, 0.5, 0.9, 0.99, "one"])
@pytest.mark.parametrize("half", [False, True])
def test_encoded_size_is_the_blob_length(name, amount, half):
    builder = BUILDERS[name]
    model = pruned(builder, one_kept(builder) if amount == "one" else amount, random_mask=True)
    assert encoded_size(model, half=half) == len(encode_sparse(model, half=half))


def test_encoded_size_follows_values_and_masks_through_a_cache():
    """One cache across changing weights: a mask is coded once while it stays the same tensor or
    the same content, again when it changes; the size always equals the blob's length."""
    model = pruned(mlp, 0.8)
    cache = MaskCodeCache()

    def same_size(m: nn.Module) -> None:
        for half in (False, True):
            assert encoded_size(m, half=half, cache=cache) == len(encode_sparse(m, half=half))

    same_size(model)
    assert cache.computed == 2
    layer, mask = model[1], getattr(model[1], MASK_BUFFER)
    with torch.no_grad():
        layer.weight.mul_(1.5)  # values change (a training step), masks do not
        layer.weight[mask.nonzero()[0].tolist()] = 0.0  # a kept weight that is exactly zero
        layer.weight[mask.nonzero()[1].tolist()] = 1e-9  # kept, but zero once stored as float16
    same_size(model)
    same_size(copy.deepcopy(model))  # other mask tensors, same content
    assert cache.computed == 2
    with torch.no_grad():
        layer.weight[(~mask).nonzero()[0].tolist()] = 3.0  # a value at a pruned position
    same_size(model)
    mask[0, :7] = ~mask[0, :7]  # the mask itself changes, in place
    apply_masks(model)
    same_size(model)
    assert cache.computed == 3
    del model[3].flexrel_mask  # one dense layer beside a masked one
    same_size(model)


def test_encoded_size_of_the_dense_layout_and_kept_zeros():
    model = nn.Sequential(nn.Linear(300, 200))
    scores = {"0.weight": torch.arange(60000, dtype=torch.float64).reshape(200, 300)}
    prune(model, scores, 1 / 60000)  # one weight pruned: the mask is `weight != 0`, dense layout
    assert layer_modes(model) == {"0.weight": "nonzero"}
    assert encoded_size(model) == len(encode_sparse(model)) == dense_size_bytes(model)
    with torch.no_grad():
        model[0].weight[5, 5] = 0.0  # a kept zero: the mask is no longer `weight != 0`
    assert layer_modes(model) != {"0.weight": "nonzero"}
    assert encoded_size(model) == len(encode_sparse(model))


@pytest.fixture()
def blob_and_model():
    model = pruned(cnn_bn, 0.9)
    return encode_sparse(model), cnn_bn


@pytest.mark.parametrize("cut", [1, 5, HEADER_BYTES, HEADER_BYTES + 3, "half"])
def test_truncated_blob_refused(blob_and_model, cut):
    blob, builder = blob_and_model
    short = blob[: len(blob) // 2] if cut == "half" else blob[:cut] if cut < HEADER_BYTES else blob[:-cut]
    with pytest.raises(ValueError, match="truncated"):
        decode_sparse(short, builder())


@pytest.mark.parametrize("where", [HEADER_BYTES - 10, HEADER_BYTES + 1, -1, "middle"])
def test_corrupted_blob_refused_and_model_untouched(blob_and_model, where):
    blob, builder = blob_and_model
    i = len(blob) // 2 if where == "middle" else where
    bad = bytearray(blob)
    bad[i] ^= 0x41
    target = builder()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="corrupted|architecture"):
        decode_sparse(bytes(bad), target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_other_architecture_and_garbage_refused(blob_and_model):
    blob, _ = blob_and_model
    with pytest.raises(ValueError, match="another architecture.*expected"):
        decode_sparse(blob, build_model("digits_cnn"))  # same layers, no BatchNorm
    with pytest.raises(ValueError, match="not a FlexRel sparse model"):
        decode_sparse(b"PK\x03\x04" + blob[4:], cnn_bn())
    with pytest.raises(ValueError, match="padded"):
        decode_sparse(blob + b"\x00", cnn_bn())
    with pytest.raises(TypeError):
        decode_sparse("not bytes", cnn_bn())


@pytest.mark.slow
def test_a_classifier_size_layer_round_trips():
    """Exactness at VGG16-classifier scale (its speed is measured by ``make bench-paper``, not here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 2048))  # 8.4M weights, a VGG16 classifier-size layer
    with torch.no_grad():
        model[0].register_buffer("flexrel_mask", torch.rand(2048, 4096) < 0.1)
        model[0].weight.mul_(model[0].flexrel_mask)
    blob = encode_sparse(model)
    out = decode_sparse(blob, nn.Sequential(nn.Linear(4096, 2048)))
    assert len(blob) == encoded_size(model)
    assert torch.equal(out[0].weight, model[0].weight)
    assert torch.equal(out[0].flexrel_mask, model[0].flexrel_mask)
