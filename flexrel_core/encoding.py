"""Sparse model encoding: the bytes a pruned model takes on the wire (FlexRel, Fig. 3's "transmitted data").

``encode_sparse(model)`` writes every tensor of ``model.state_dict()`` into one self-checking blob
and ``decode_sparse(blob, model)`` loads it back: weights, FlexRel masks (buffer ``flexrel_mask``)
and every non-prunable tensor (biases, BatchNorm buffers) come back bit for bit (pruned weights
are +0.0, as ``masks.apply_masks`` leaves them; no sign of a pruned zero is sent).

**Layout.** A 26-byte header (magic ``FRSE``, version, flags, an 8-byte architecture fingerprint
= sha256 of the names, shapes and dtypes of the tensors, the payload length, and a CRC32 of header
and payload), then one record per tensor in ``state_dict`` order. A non-prunable tensor is its raw
bytes (its shape and dtype follow from the architecture). A prunable weight (``nn.Linear`` /
``nn.Conv2d``) is one mode byte, the mask coded the smallest of these ways, then the values of the
kept weights only:

- ``ALL``: no mask, or a mask that keeps everything -- raw values, 0 mask bits;
- ``NONZERO``: the mask is exactly ``weight != 0`` -- raw values, 0 mask bits (the dense layout);
- ``BITMAP``: one bit per weight (best near density 0.5);
- ``RICE_KEPT`` / ``RICE_PRUNED``: Golomb-Rice codes of the gaps between the positions of the
  minority symbol (kept weights when sparse, pruned ones when dense), with the Rice parameter r
  chosen per layer by trying the values around log2(mean gap * ln 2). Unary parts and r-bit
  remainders sit in two runs of bits (``bitcodes``), so both directions are a handful of
  vectorised torch operations.

**Where it runs.** Masks are coded and decoded on the weights' own device (a GPU-resident model
leaves the GPU only as the bytes of kept values and mask codes); ``decode_sparse`` builds the
tensors on the device of the model it loads into. ``encoded_size`` gives the blob's length
without writing it, with a ``MaskCodeCache`` so that an unchanged mask is coded once (what
Figure 3's per-message byte counts need).

**Why a hand-written coder.** The information bound of a mask with k of N weights kept is
log2 C(N, k) bits. For a random-looking mask the gaps are close to geometric, for which Golomb
codes are optimal and Rice codes lose a few percent of the mask bits at most; general-purpose
compressors (zlib, lzma) work on bytes and stay far from the bound on such masks (e.g. tens of
percent above it at density 0.1). Values are raw IEEE bits (or float16 with ``half=True``, a lossy
option whose accuracy effect notebook fig3 measures), which is what the bound counts for them.

Because the ``ALL`` / ``NONZERO`` layouts are candidates, an encoded model is never larger than
``dense_size_bytes(model)`` (the same container with every tensor raw) -- except for a mask that
keeps exact zeros and so cannot be read off the weights, which a dense layout cannot carry at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import weakref
import zlib

import numpy as np
import torch
from torch import nn

from .bitcodes import (
    Reader,
    as_bytes_tensor,
    mask_at,
    pack_bits,
    positions_of,
    rice_cost,
    rice_decode,
    rice_encode,
    select,
    spread,
    unpack_bits,
    varint,
    zero_counts,
)
from .layers import prunable_layers
from .masks import MASK_BUFFER

__all__ = ["rice_cost", "rice_decode", "rice_encode"]  # the mask codes, re-exported from bitcodes

MAGIC = b"FRSE"
VERSION = 1
FLAG_HALF = 1
_HEADER = struct.Struct("<4sBB8sQI")  # magic, version, flags, fingerprint, payload bytes, crc32
HEADER_BYTES = _HEADER.size
ALL, NONZERO, BITMAP, RICE_KEPT, RICE_PRUNED = range(5)
MODE_NAMES = ("all", "nonzero", "bitmap", "rice_kept", "rice_pruned")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --------------------------------------------------------------------------- architecture
def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that travels, mask buffers excluded (they are coded with their weight)."""
    suffix = "." + MASK_BUFFER
    return {k: v for k, v in model.state_dict().items() if not k.endswith(suffix) and k != MASK_BUFFER}


def fingerprint(model: nn.Module) -> bytes:
    """8 bytes of sha256 over the names, shapes and dtypes of the model's tensors (masks excluded)."""
    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in _tensors(model).items())
    return hashlib.sha256(text.encode()).digest()[:8]


def _stored_dtype(t: torch.Tensor, half: bool) -> torch.dtype:
    return torch.float16 if half and t.dtype.is_floating_point else t.dtype


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _raw(t: torch.Tensor) -> np.ndarray:
    """The tensor's bits as a flat numpy integer array in host memory (every dtype, bfloat16 included)."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8 if t.dtype == torch.bool else _INT_VIEW[t.element_size()]).cpu().numpy()


def _from_raw(buf: memoryview, dtype: torch.dtype, n: int, device: torch.device) -> torch.Tensor:
    """``n`` values of ``dtype`` from their raw bytes, on ``device``."""
    if n == 0:
        return torch.empty(0, dtype=dtype, device=device)
    flat = as_bytes_tensor(buf, device)
    return flat.view(dtype) if dtype != torch.bool else flat.bool()


# --------------------------------------------------------------------------- choosing a layout
@dataclasses.dataclass(frozen=True)
class MaskCode:
    """What the layout of a masked weight depends on in its mask: ``n`` weights, ``kept`` of them,
    ``minority`` positions of the rarer symbol and their Golomb-Rice code (``rice_bits`` bits with
    parameter ``rice_r``; None when a Rice code cannot beat the bitmap)."""

    n: int
    kept: int
    minority: int = 0
    rice_bits: int | None = None
    rice_r: int = 0

    @property
    def minority_kept(self) -> bool:
        return self.kept <= self.n - self.kept


def mask_code(mask: torch.Tensor) -> tuple[MaskCode, torch.Tensor | None]:
    """The ``MaskCode`` of a flat boolean mask and its minority positions (None unless Rice-coded)."""
    n, k = mask.numel(), int(torch.count_nonzero(mask))
    minority = min(k, n - k)
    if k == n or not minority < 0.45 * n:  # above 0.45 n a Rice code cannot beat the bitmap
        return MaskCode(n, k, minority), None
    positions = positions_of(mask if k <= n - k else ~mask)
    bits, r = rice_cost(positions)
    return MaskCode(n, k, minority, bits, r), positions


def _weight_facts(w: torch.Tensor, m: torch.Tensor) -> tuple[bool, int]:
    """(every pruned position holds a zero, number of non-zero values) of a flat weight in its stored dtype."""
    count, kept = zero_counts(w, m)
    return count == kept, count


def _layout(code: MaskCode, itemsize: int, clean: bool, nonzero: int) -> tuple[int, int, int]:
    """(mode, r, record bytes) of a masked weight: the smallest candidate layout, ties to the lower mode.

    ``clean``: pruned positions hold zeros only (then only kept values are sent); ``nonzero``: the
    count of non-zero values (the dense layout needs the mask to be exactly ``weight != 0``)."""
    n, k = code.n, code.kept
    if k == n:
        return ALL, 0, 1 + n * itemsize
    value_bytes = (k if clean else n) * itemsize
    candidates = [(1 + (n + 7) // 8 + value_bytes, BITMAP, 0, 1 + (n + 7) // 8 + value_bytes)]
    if clean and nonzero == k:
        candidates.append((1 + n * itemsize, NONZERO, 0, 1 + n * itemsize))
    if code.rice_bits is not None:
        c, bits, r = code.minority, code.rice_bits, code.rice_r
        record = 2 + len(varint(c)) + len(varint(bits - c * r)) + (bits + 7) // 8 + value_bytes
        # The choice has always counted one byte more than a Rice record takes; kept, so blobs stay the same.
        candidates.append((record + 1, RICE_KEPT if code.minority_kept else RICE_PRUNED, r, record))
    _, mode, r, size = min(candidates)
    return mode, r, size


class MaskCodeCache:
    """``MaskCode`` of the masks already seen, for ``encoded_size``: a model whose masks did not change
    costs one pass over its weights, not a new mask code. A mask is recognised as the same tensor
    unmodified since (identity and version counter), or else by content (blake2b of its packed bits)."""

    def __init__(self) -> None:
        self._codes: dict[tuple[int, bytes], MaskCode] = {}
        self._seen: dict[int, tuple[weakref.ref, int, tuple[int, bytes]]] = {}
        self.computed = 0  # mask codes computed (the rest came from the cache)

    def code(self, mask: torch.Tensor) -> MaskCode:
        """The ``MaskCode`` of ``mask`` (any shape, True = kept)."""
        seen = self._seen.get(id(mask))
        if seen is not None and seen[0]() is mask and seen[1] == mask._version:
            return self._codes[seen[2]]
        m = mask.detach().reshape(-1).to(torch.bool)
        key = (m.numel(), hashlib.blake2b(pack_bits(m).cpu().numpy(), digest_size=16).digest())
        if key not in self._codes:
            self._codes[key] = mask_code(m)[0]
            self.computed += 1
        self._seen = {i: s for i, s in self._seen.items() if s[0]() is not None}
        self._seen[id(mask)] = (weakref.ref(mask), mask._version, key)
        return self._codes[key]


# --------------------------------------------------------------------------- one prunable weight
def _encode_weight(weight: torch.Tensor, mask: torch.Tensor | None, half: bool) -> list:
    """The smallest record (mode byte, mask code, values) for one prunable weight, as buffers."""
    w = weight.detach().reshape(-1).to(_stored_dtype(weight, half))
    if mask is None:
        return [bytes([ALL]), _raw(w)]
    m = mask.detach().reshape(-1).to(device=w.device, dtype=torch.bool)
    code, positions = mask_code(m)
    clean, nonzero = _weight_facts(w, m) if code.kept < code.n else (True, 0)
    mode, r, _ = _layout(code, w.element_size(), clean, nonzero)
    if mode == ALL:
        return [bytes([ALL | 1 << 4]), _raw(w)]
    head = bytes([mode | (not clean and mode != NONZERO) << 3 | 1 << 4])
    if mode == NONZERO:
        return [head, _raw(w)]
    kept = _raw(select(w, positions if mode == RICE_KEPT else m)) if clean else _raw(w)
    if mode == BITMAP:
        return [head, pack_bits(m).cpu().numpy(), kept]
    u, bits = rice_encode(positions, r)
    return [head + bytes([r]) + varint(code.minority) + varint(u), bits.cpu().numpy(), kept]


def _decode_weight(rd: Reader, like: torch.Tensor, half: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight record, decoded on the device of ``like`` (the model's weight)."""
    stored, dev = _stored_dtype(like, half), like.device
    n, itemsize = like.numel(), _itemsize(stored)
    head = rd.byte()
    mode, values_all, has_mask = head & 7, bool(head >> 3 & 1), bool(head >> 4 & 1)
    if mode > RICE_PRUNED or head >> 5:
        raise ValueError(f"corrupted blob: unknown weight layout byte {head:#x}")
    if mode in (ALL, NONZERO):
        w = _from_raw(rd.take(n * itemsize), stored, n, dev)
        mask = None if not has_mask else torch.ones(n, dtype=torch.bool, device=dev) if mode == ALL else w != 0
    else:
        if mode == BITMAP:
            mask = index = unpack_bits(as_bytes_tensor(rd.take((n + 7) // 8), dev), n).bool()
            k = int(torch.count_nonzero(mask))
        else:
            r, count = rd.byte(), rd.varint()
            u = rd.varint()
            positions = rice_decode(as_bytes_tensor(rd.take((u + count * r + 7) // 8), dev), count, u, r, n)
            mask = mask_at(positions, n, mode == RICE_KEPT)
            index, k = (positions, count) if mode == RICE_KEPT else (mask, n - count)
        k = n if values_all else k
        vals = _from_raw(rd.take(k * itemsize), stored, k, dev)
        w = vals if values_all else spread(index, vals, n)
    shape = like.shape
    return w.to(like.dtype).reshape(shape), None if mask is None else mask.reshape(shape)


# --------------------------------------------------------------------------- public API
def encode_sparse(model: nn.Module, *, half: bool = False) -> bytes:
    """The model's weights, masks and other tensors as one blob (layout in the module docstring).

    ``half=True`` stores floating-point values as float16 (lossy; half the value bits)."""
    layers = prunable_layers(model)
    parts: list = []
    for name, t in _tensors(model).items():
        if name in layers:
            parts += _encode_weight(t, getattr(layers[name], MASK_BUFFER, None), half)
        else:
            parts.append(_raw(t.detach().to(_stored_dtype(t, half))))
    length = sum(memoryview(p).nbytes for p in parts)
    head = _HEADER.pack(MAGIC, VERSION, FLAG_HALF if half else 0, fingerprint(model), length, 0)[:-4]
    crc = zlib.crc32(head)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return b"".join([head, struct.pack("<I", crc), *parts])


def encoded_size(model: nn.Module, *, half: bool = False, cache: MaskCodeCache | None = None) -> int:
    """``len(encode_sparse(model, half=half))``, computed without writing the blob.

    A weight's record length follows from its mask's ``MaskCode`` (looked up in ``cache`` when one
    is given, so an unchanged mask is coded once) and two counts over its values in the stored
    dtype: the non-zero values, and those at pruned positions. Passes run on the weights' device."""
    cache = cache if cache is not None else MaskCodeCache()
    layers = prunable_layers(model)
    size = HEADER_BYTES
    for name, t in _tensors(model).items():
        stored = _stored_dtype(t, half)
        mask = getattr(layers[name], MASK_BUFFER, None) if name in layers else None
        if name not in layers or mask is None:
            size += (name in layers) + t.numel() * _itemsize(stored)
            continue
        code = cache.code(mask)
        w = t.detach().reshape(-1).to(stored)
        clean, nonzero = _weight_facts(w, mask.reshape(-1).to(w.device)) if code.kept < code.n else (True, 0)
        size += _layout(code, _itemsize(stored), clean, nonzero)[2]
    return size


def decode_sparse(blob: bytes, model: nn.Module) -> nn.Module:
    """Load ``blob`` (from ``encode_sparse``) into ``model`` in place and return it.

    Raises ``ValueError`` naming what was expected for a blob that is not one, is truncated or
    corrupted (CRC32 mismatch), or was encoded for another architecture; ``model`` is left
    untouched then."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    blob = memoryview(blob).cast("B")
    if len(blob) < HEADER_BYTES:
        raise ValueError(f"truncated blob: {len(blob)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, flags, fp, length, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"not a FlexRel sparse model: expected magic {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise ValueError(f"unsupported encoding version {version}; this code reads version {VERSION}")
    if len(blob) != HEADER_BYTES + length:
        what = "truncated" if len(blob) < HEADER_BYTES + length else "padded"
        raise ValueError(f"{what} or corrupted blob: header announces {HEADER_BYTES + length} bytes, got {len(blob)}")
    if zlib.crc32(blob[HEADER_BYTES:], zlib.crc32(blob[: HEADER_BYTES - 4])) != crc:
        raise ValueError("corrupted blob: CRC32 of header and payload does not match the stored checksum")
    expected = fingerprint(model)
    if fp != expected:
        raise ValueError(
            f"blob was encoded for another architecture (fingerprint {fp.hex()}); expected {expected.hex()}, "
            f"the fingerprint of this {type(model).__name__}'s tensor names, shapes and dtypes"
        )
    half = bool(flags & FLAG_HALF)
    layers = prunable_layers(model)
    rd = Reader(blob[HEADER_BYTES:])
    values: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor | None] = {}
    for name, t in _tensors(model).items():
        if name in layers:
            values[name], masks[name] = _decode_weight(rd, t, half)
        else:
            stored = _stored_dtype(t, half)
            raw = rd.take(t.numel() * _itemsize(stored))
            values[name] = _from_raw(raw, stored, t.numel(), t.device).to(t.dtype).reshape(t.shape)
    if rd.pos != len(rd.buf):
        raise ValueError(f"corrupted blob: {len(rd.buf) - rd.pos} bytes left over after the last tensor")
    with torch.no_grad():
        state = model.state_dict()
        for name, v in values.items():
            state[name].copy_(v)
        for name, mask in masks.items():
            module = layers[name]
            if mask is None:
                module._buffers.pop(MASK_BUFFER, None)
            elif MASK_BUFFER in module._buffers:
                module._buffers[MASK_BUFFER] = mask.to(module.weight.device)
            else:
                module.register_buffer(MASK_BUFFER, mask.to(module.weight.device))
    return model


def dense_size_bytes(model: nn.Module, *, half: bool = False) -> int:
    """Bytes of the dense encoding: the same container with every tensor's values raw (masks not sent)."""
    value_bytes = sum(t.numel() * _itemsize(_stored_dtype(t, half)) for t in _tensors(model).values())
    return HEADER_BYTES + len(prunable_layers(model)) + value_bytes


def information_bound_bits(model: nn.Module, *, half: bool = False) -> float:
    """log2 C(N, k) bits per layer mask + the value bits of the kept weights + the bits of every other tensor."""
    layers = prunable_layers(model)
    bits = 0.0
    for name, t in _tensors(model).items():
        item = _itemsize(_stored_dtype(t, half)) * 8
        if name in layers:
            mask = getattr(layers[name], MASK_BUFFER, None)
            n = t.numel()
            k = n if mask is None else int(torch.count_nonzero(mask))
            bits += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) + k * item
        else:
            bits += t.numel() * item
    return bits


def layer_modes(blob_model: nn.Module, *, half: bool = False) -> dict[str, str]:
    """Which mask layout ``encode_sparse`` picks for each prunable weight (for inspection and tests)."""
    out = {}
    for name, m in prunable_layers(blob_model).items():
        out[name] = MODE_NAMES[_encode_weight(m.weight, getattr(m, MASK_BUFFER, None), half)[0][0] & 7]
    return out
