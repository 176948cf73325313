"""Byte- and bit-level codes and mask primitives for ``encoding.py``, on the tensors' own device.

Integers in a header are LEB128 varints (``varint``, read back by ``Reader``).

Bits are packed most significant first, eight to a byte, the last byte padded with zeros
(``numpy.packbits``' order). A Golomb-Rice code with parameter r writes each gap g between
consecutive sorted positions (the first gap counted from -1) as q = g >> r zeros and a one -- all
unary parts in one run of bits -- then the low r bits of every gap, most significant first, in a
second run that follows the first.

Every function takes and returns torch tensors. On a GPU (any non-CPU device) they are a few
vectorised torch passes (cumulative sums, scatters, shifts), so a GPU-resident mask is coded
without leaving the GPU. On the CPU the same results come from numpy, which is several times
faster there for these operations (``hostarrays``); ``tests/test_bitcodes.py`` checks that both
paths agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .hostarrays import host_array as _host_array

Bytes = bytes | bytearray | memoryview


def host_array(t: torch.Tensor) -> np.ndarray | None:
    """``hostarrays.host_array``: the numpy view of a CPU tensor, or None (take the torch path)."""
    return _host_array(t)


def as_bytes_tensor(data: Bytes | torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """``data`` as a flat uint8 tensor on ``device`` (bytes are copied once; a tensor only moves)."""
    if isinstance(data, torch.Tensor):
        flat = data.reshape(-1)
    else:
        flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
    return flat if device is None else flat.to(device)


# --------------------------------------------------------------------------- bytes
def varint(n: int) -> bytes:
    """LEB128: seven bits a byte, least significant first, high bit set on every byte but the last."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Reader:
    """Sequential reads of a byte buffer that refuse to run past its end."""

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


# --------------------------------------------------------------------------- mask primitives
def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Sorted int64 positions of the True entries of a flat boolean mask."""
    m = host_array(mask)
    return torch.from_numpy(np.flatnonzero(m)) if m is not None else torch.nonzero(mask).squeeze(1)


def select(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for a flat tensor and a boolean mask or sorted int64 positions."""
    v, i = host_array(values), host_array(index)
    return torch.from_numpy(v[i]) if v is not None and i is not None else values[index]


def spread(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """A flat tensor of ``n`` zeros holding ``values`` at ``index`` (a boolean mask or int64 positions)."""
    v, i = host_array(values), host_array(index)
    if v is not None and i is not None:
        out = np.zeros(n, dtype=v.dtype)
        out[i] = v
        return torch.from_numpy(out)
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    out[index] = values
    return out


def mask_at(positions: torch.Tensor, n: int, value: bool) -> torch.Tensor:
    """A flat boolean mask of ``n`` entries that is ``value`` at ``positions`` and ``not value`` elsewhere."""
    p = host_array(positions)
    if p is not None:
        out = np.full(n, not value)
        out[p] = value
        return torch.from_numpy(out)
    out = torch.full((n,), not value, dtype=torch.bool, device=positions.device)
    out[positions] = value
    return out


def zero_counts(values: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(non-zero values, non-zero values at True entries of ``mask``) of flat tensors (-0.0 is zero)."""
    v, m = host_array(values), host_array(mask)
    if v is not None and m is not None:
        nonzero = v != 0
        return int(np.count_nonzero(nonzero)), int(np.count_nonzero(nonzero & m))
    nonzero = values != 0
    return int(torch.count_nonzero(nonzero)), int(torch.count_nonzero(nonzero & mask))


# --------------------------------------------------------------------------- bit packing
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Flat 0/1 (or bool) tensor -> uint8 tensor of ceil(len / 8) bytes, first bit in the high bit."""
    b = host_array(bits.reshape(-1))
    return torch.from_numpy(np.packbits(b.astype(bool, copy=False))) if b is not None else _pack_torch(bits)


def _pack_torch(bits: torch.Tensor) -> torch.Tensor:
    pad = -bits.numel() % 8
    b = torch.cat([bits.reshape(-1).to(torch.uint8), bits.new_zeros(pad, dtype=torch.uint8)]).view(-1, 8)
    out = b[:, 0] << 7
    for j in range(1, 8):
        out |= b[:, j] << (7 - j)
    return out


def unpack_bits(data: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` bits of a uint8 tensor as a uint8 tensor of 0/1 (inverse of ``pack_bits``)."""
    if data.numel() * 8 < count:
        raise ValueError(f"corrupted blob: {data.numel()} bytes cannot hold {count} bits")
    d = host_array(data)
    return torch.from_numpy(np.unpackbits(d, count=count)) if d is not None else _unpack_torch(data, count)


def _unpack_torch(data: torch.Tensor, count: int) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=data.device)
    return ((data[:, None] >> shifts) & 1).reshape(-1)[:count]


# --------------------------------------------------------------------------- Golomb-Rice codes
def gaps(positions: torch.Tensor) -> torch.Tensor:
    """Gaps between sorted positions (int64): p[0], then p[i] - p[i-1] - 1."""
    p = torch.as_tensor(positions).reshape(-1).to(torch.int64)
    p_np = host_array(p)
    if p_np is not None:
        return torch.from_numpy(np.diff(p_np, prepend=-1) - 1)
    return torch.diff(p, prepend=p.new_full((1,), -1)) - 1


def rice_cost(positions: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(bits, r): the smallest Golomb-Rice code of the gaps between sorted ``positions``, trying r
    around log2(mean gap * ln 2) (two either side; the smallest r wins a tie)."""
    g = gaps(positions)
    c = g.numel()
    if c == 0:
        return 0, 0
    g_np = host_array(g)
    mean = int(g.sum()) / c  # an exact integer sum, then one rounding (as numpy's mean of integers)
    r0 = int(max(0.0, math.floor(math.log2(max(mean, 1e-12) * math.log(2) + 1e-12))))
    best = None
    for r in range(max(0, r0 - 2), min(r0 + 3, 62)):
        bits = (int((g_np >> r).sum()) if g_np is not None else int((g >> r).sum())) + c * (1 + r)
        if best is None or bits < best[0]:
            best = (bits, r)
    return best


def rice_encode(positions: torch.Tensor | np.ndarray, r: int) -> tuple[int, torch.Tensor]:
    """Rice-code the gaps between sorted ``positions``: (unary bit count U, uint8 tensor of the
    U + count * r bits packed), on the positions' device."""
    g = gaps(positions)
    if g.numel() == 0:
        return 0, torch.empty(0, dtype=torch.uint8, device=g.device)
    g_np = host_array(g)
    if g_np is not None:
        u, bits = _rice_bits_numpy(g_np, r)
        return u, torch.from_numpy(np.packbits(bits))
    u, bits = _rice_bits_torch(g, r)
    return u, _pack_torch(bits)


def _rice_bits_numpy(g: np.ndarray, r: int) -> tuple[int, np.ndarray]:
    ends = np.cumsum((g >> r) + 1) - 1
    u = int(ends[-1]) + 1
    bits = np.zeros(u + len(g) * r, dtype=np.uint8)
    bits[ends] = 1
    rem = bits[u:].reshape(len(g), r)
    for j in range(r):
        rem[:, j] = (g >> (r - 1 - j)) & 1
    return u, bits


def _rice_bits_torch(g: torch.Tensor, r: int) -> tuple[int, torch.Tensor]:
    ends = torch.cumsum((g >> r) + 1, 0) - 1
    u = int(ends[-1]) + 1
    bits = torch.zeros(u + g.numel() * r, dtype=torch.uint8, device=g.device)
    bits[ends] = 1
    rem = bits[u:].view(g.numel(), r)
    for j in range(r):
        rem[:, j] = ((g >> (r - 1 - j)) & 1).to(torch.uint8)
    return u, bits


def rice_decode(data: Bytes | torch.Tensor, count: int, u: int, r: int, n: int) -> torch.Tensor:
    """Inverse of ``rice_encode``: the ``count`` sorted positions (int64, on ``data``'s device when
    it is a tensor), refused unless the code holds exactly that many and all lie in [0, n)."""
    bits = unpack_bits(as_bytes_tensor(data), u + count * r)
    b_np = host_array(bits)
    positions = (
        _rice_positions_numpy(b_np, count, u, r) if b_np is not None else _rice_positions_torch(bits, count, u, r)
    )
    if count and int(positions[-1]) >= n:
        raise ValueError("corrupted blob: a Rice-coded mask points past the end of its layer")
    return positions


def _check_ends(found: int, last: int | None, count: int, u: int) -> None:
    if found != count or (count and last != u - 1):
        raise ValueError("corrupted blob: a Rice-coded mask does not hold the announced number of positions")


def _rice_positions_numpy(bits: np.ndarray, count: int, u: int, r: int) -> torch.Tensor:
    ends = np.flatnonzero(bits[:u])
    _check_ends(len(ends), int(ends[-1]) if len(ends) else None, count, u)
    g = np.diff(ends, prepend=-1).astype(np.int64) - 1
    if r:
        g <<= r
        rem = bits[u:].reshape(count, r).astype(np.int64)
        for j in range(r):
            g |= rem[:, j] << (r - 1 - j)
    return torch.from_numpy(np.cumsum(g + 1) - 1)


def _rice_positions_torch(bits: torch.Tensor, count: int, u: int, r: int) -> torch.Tensor:
    ends = torch.nonzero(bits[:u]).squeeze(1)
    _check_ends(ends.numel(), int(ends[-1]) if ends.numel() else None, count, u)
    g = torch.diff(ends, prepend=ends.new_full((1,), -1)) - 1
    if r:
        g <<= r
        rem = bits[u:].view(count, r).to(torch.int64)
        for j in range(r):
            g |= rem[:, j] << (r - 1 - j)
    return torch.cumsum(g + 1, 0) - 1
