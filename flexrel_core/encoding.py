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
  remainders sit in two runs of bits, so both directions are a handful of vectorised numpy
  operations (a VGG16-size layer codes in about a second).

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

import hashlib
import math
import struct
import zlib

import numpy as np
import torch
from torch import nn

from .layers import prunable_layers
from .masks import MASK_BUFFER

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


def _raw(t: torch.Tensor) -> np.ndarray:
    """The tensor's bits as a flat numpy integer array (works for every dtype, bfloat16 included)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(_INT_VIEW[t.element_size()]).numpy() if t.dtype != torch.bool else t.numpy().view(np.uint8)


def _from_raw(buf: bytes | memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
    if n == 0:
        return torch.empty(0, dtype=dtype)
    flat = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    return flat.view(dtype) if dtype != torch.bool else flat.bool()


# --------------------------------------------------------------------------- varints and Rice codes
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1) - 1


def rice_cost(positions: np.ndarray) -> tuple[int, int]:
    """(bits, r): the smallest Golomb-Rice code of the gaps between sorted ``positions``."""
    c = len(positions)
    if c == 0:
        return 0, 0
    gaps = _gaps(positions)
    r0 = int(max(0.0, math.floor(math.log2(max(float(gaps.mean()), 1e-12) * math.log(2) + 1e-12))))
    best = None
    for r in range(max(0, r0 - 2), min(r0 + 3, 62)):
        bits = int((gaps >> r).sum()) + c * (1 + r)
        if best is None or bits < best[0]:
            best = (bits, r)
    return best


def rice_encode(positions: np.ndarray, r: int) -> tuple[int, bytes]:
    """Rice-code the gaps between sorted ``positions``: (unary bit count U, bytes of U + c*r bits).

    Each gap g is q = g >> r zeros then a one (in the unary run), and g's low r bits (in the
    remainder run that follows the unary run)."""
    gaps = _gaps(positions).astype(np.int64)
    q = gaps >> r
    ends = np.cumsum(q + 1) - 1
    u = int(ends[-1]) + 1 if len(ends) else 0
    bits = np.zeros(u + len(gaps) * r, dtype=np.uint8)
    bits[ends] = 1
    if r:
        rem = bits[u:].reshape(len(gaps), r)
        for j in range(r):
            rem[:, j] = (gaps >> (r - 1 - j)) & 1
    return u, np.packbits(bits).tobytes()


def rice_decode(buf: bytes | memoryview, count: int, u: int, r: int, n: int) -> np.ndarray:
    """Inverse of ``rice_encode``: the ``count`` sorted positions, refused unless all lie in [0, n)."""
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=u + count * r)
    ends = np.flatnonzero(bits[:u])
    if len(ends) != count or (count and ends[-1] != u - 1):
        raise ValueError("corrupted blob: a Rice-coded mask does not hold the announced number of positions")
    gaps = np.diff(ends, prepend=-1).astype(np.int64) - 1
    if r:
        gaps <<= r
        rem = bits[u:].reshape(count, r).astype(np.int64)
        for j in range(r):
            gaps |= rem[:, j] << (r - 1 - j)
    positions = np.cumsum(gaps + 1) - 1
    if count and positions[-1] >= n:
        raise ValueError("corrupted blob: a Rice-coded mask points past the end of its layer")
    return positions


# --------------------------------------------------------------------------- one prunable weight
def _encode_weight(weight: torch.Tensor, mask: torch.Tensor | None, half: bool) -> bytes:
    """The smallest record (mode byte, mask code, values) for one prunable weight."""
    w = weight.detach().cpu().to(_stored_dtype(weight, half)).reshape(-1)
    n = w.numel()
    vals = _raw(w)
    itemsize = w.element_size()
    has_mask = mask is not None
    m = None if mask is None else mask.detach().cpu().reshape(-1).bool()
    if m is None or bool(m.all()):
        return bytes([ALL | has_mask << 4]) + vals.tobytes()
    m_np = m.numpy()
    k = int(m_np.sum())
    nonzero = (w != 0).numpy()
    pruned_clean = not (nonzero & ~m_np).any()  # pruned positions hold (signed) zeros only
    candidates: list[tuple[int, int, int]] = []  # (bytes, mode, r)
    if pruned_clean and bool((nonzero == m_np).all()):
        candidates.append((1 + n * itemsize, NONZERO, 0))
    value_bytes = (k if pruned_clean else n) * itemsize
    candidates.append((1 + (n + 7) // 8 + value_bytes, BITMAP, 0))
    minority_kept = k <= n - k
    positions = np.flatnonzero(m_np if minority_kept else ~m_np)
    if len(positions) < 0.45 * n:  # above this a Rice code cannot beat the bitmap
        positions = positions.astype(np.int32 if n < 2**31 else np.int64)
        bits, r = rice_cost(positions)
        mode = RICE_KEPT if minority_kept else RICE_PRUNED
        framing = 2 + len(_varint(len(positions))) + len(_varint(bits - len(positions) * r))
        candidates.append((1 + framing + (bits + 7) // 8 + value_bytes, mode, r))
    _, mode, r = min(candidates)
    head = bytes([mode | (not pruned_clean and mode != NONZERO) << 3 | 1 << 4])
    if mode == NONZERO:
        return head + vals.tobytes()
    kept = vals[m_np].tobytes() if pruned_clean else vals.tobytes()
    if mode == BITMAP:
        return head + np.packbits(m_np).tobytes() + kept
    u, code = rice_encode(positions, r)
    return head + bytes([r]) + _varint(len(positions)) + _varint(u) + code + kept


class _Reader:
    """Sequential reads that refuse to run past the end of the payload."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"truncated blob: needed {n} more bytes at payload offset {self.pos}, {len(self.buf)} in all"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value
            if shift > 63:
                raise ValueError("corrupted blob: overlong integer")


def _decode_weight(rd: _Reader, like: torch.Tensor, half: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    stored = _stored_dtype(like, half)
    n, itemsize = like.numel(), torch.empty(0, dtype=stored).element_size()
    head = rd.byte()
    mode, values_all, has_mask = head & 7, bool(head >> 3 & 1), bool(head >> 4 & 1)
    if mode > RICE_PRUNED or head >> 5:
        raise ValueError(f"corrupted blob: unknown weight layout byte {head:#x}")
    if mode in (ALL, NONZERO):
        w = _from_raw(rd.take(n * itemsize), stored, n)
        mask = None if not has_mask else torch.ones(n, dtype=torch.bool) if mode == ALL else w != 0
    else:
        if mode == BITMAP:
            m = np.unpackbits(np.frombuffer(rd.take((n + 7) // 8), dtype=np.uint8), count=n).astype(bool)
        else:
            r, count = rd.byte(), rd.varint()
            u = rd.varint()
            positions = rice_decode(rd.take((u + count * r + 7) // 8), count, u, r, n)
            m = np.zeros(n, dtype=bool) if mode == RICE_KEPT else np.ones(n, dtype=bool)
            m[positions] = mode == RICE_KEPT
        mask = torch.from_numpy(m)
        k = n if values_all else int(m.sum())
        vals = _from_raw(rd.take(k * itemsize), stored, k)
        if values_all:
            w = vals
        else:
            w = torch.zeros(n, dtype=stored)
            w[mask] = vals
    shape = like.shape
    return w.to(like.dtype).reshape(shape), None if mask is None else mask.reshape(shape)


# --------------------------------------------------------------------------- public API
def encode_sparse(model: nn.Module, *, half: bool = False) -> bytes:
    """The model's weights, masks and other tensors as one blob (layout in the module docstring).

    ``half=True`` stores floating-point values as float16 (lossy; half the value bits)."""
    layers = prunable_layers(model)
    parts = []
    for name, t in _tensors(model).items():
        if name in layers:
            parts.append(_encode_weight(t, getattr(layers[name], MASK_BUFFER, None), half))
        else:
            parts.append(_raw(t.detach().cpu().to(_stored_dtype(t, half))).tobytes())
    payload = b"".join(parts)
    flags = FLAG_HALF if half else 0
    head = _HEADER.pack(MAGIC, VERSION, flags, fingerprint(model), len(payload), 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def decode_sparse(blob: bytes, model: nn.Module) -> nn.Module:
    """Load ``blob`` (from ``encode_sparse``) into ``model`` in place and return it.

    Raises ``ValueError`` naming what was expected for a blob that is not one, is truncated or
    corrupted (CRC32 mismatch), or was encoded for another architecture; ``model`` is left
    untouched then."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
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
    rd = _Reader(memoryview(blob)[HEADER_BYTES:])
    values: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor | None] = {}
    for name, t in _tensors(model).items():
        if name in layers:
            values[name], masks[name] = _decode_weight(rd, t, half)
        else:
            stored = _stored_dtype(t, half)
            size = t.numel() * torch.empty(0, dtype=stored).element_size()
            values[name] = _from_raw(rd.take(size), stored, t.numel()).to(t.dtype).reshape(t.shape)
    if rd.pos != len(rd.buf):
        raise ValueError(f"corrupted blob: {len(rd.buf) - rd.pos} bytes left over after the last tensor")
    with torch.no_grad():
        state = model.state_dict()
        for name, v in values.items():
            state[name].copy_(v.to(state[name].device))
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
    value_bytes = sum(
        t.numel() * torch.empty(0, dtype=_stored_dtype(t, half)).element_size() for t in _tensors(model).values()
    )
    return HEADER_BYTES + len(prunable_layers(model)) + value_bytes


def information_bound_bits(model: nn.Module, *, half: bool = False) -> float:
    """log2 C(N, k) bits per layer mask + the value bits of the kept weights + the bits of every other tensor."""
    layers = prunable_layers(model)
    bits = 0.0
    for name, t in _tensors(model).items():
        item = torch.empty(0, dtype=_stored_dtype(t, half)).element_size() * 8
        if name in layers:
            mask = getattr(layers[name], MASK_BUFFER, None)
            n = t.numel()
            k = n if mask is None else int(mask.sum())
            bits += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) + k * item
        else:
            bits += t.numel() * item
    return bits


def layer_modes(blob_model: nn.Module, *, half: bool = False) -> dict[str, str]:
    """Which mask layout ``encode_sparse`` picks for each prunable weight (for inspection and tests)."""
    out = {}
    for name, m in prunable_layers(blob_model).items():
        out[name] = MODE_NAMES[_encode_weight(m.weight, getattr(m, MASK_BUFFER, None), half)[0] & 7]
    return out
