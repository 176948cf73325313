"""Naive, independent reference implementations for the tests (float64, tiny sizes, no zennit).

- epsilon-rule LRP through dense matrices (Bach et al. 2015; zennit's ``Epsilon``),
- the z+ rule on non-negative inputs (zennit's ``ZPlus``: positive weights, the bias's positive part),
- the flat rule (zennit's ``Flat``: weights and inputs replaced by ones), on every connection or on the
  connections of an unfolded convolution,
- the sum of two tensors (zennit's ``Sum`` layer with ``Norm``: each operand's share of the sum),
- the explicit unfolded (Toeplitz) matrix of a Conv2d, built by looping over every connection.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

EPS = 1e-6


def stabilize(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1 (zennit's stabilizer)."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def epsilon_lrp(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rel_out: torch.Tensor):
    """R_a = a * (W^T (R_b / stab(W a + b))) for a dense layer W (J x K), batch (n x K)."""
    z = a @ weight.T + (0 if bias is None else bias)
    return a * ((rel_out / stabilize(z)) @ weight)


def flat_lrp(a: torch.Tensor, weight: torch.Tensor, rel_out: torch.Tensor) -> torch.Tensor:
    """Flat rule: every input of a connection gets an equal share, R_a[k] = sum_j R_b[j] / stab(K)."""
    ones_w = torch.ones_like(weight)
    z = torch.ones_like(a) @ ones_w.T
    return torch.ones_like(a) * ((rel_out / stabilize(z)) @ ones_w)


def zplus_lrp(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rel_out: torch.Tensor):
    """R_a = a * (W+^T (R_b / (W+ a + b+ + eps))) for inputs a >= 0 (the negative part vanishes)."""
    w = weight.clamp(min=0)
    z = a @ w.T + (0 if bias is None else bias.clamp(min=0))
    return a * ((rel_out / stabilize(z)) @ w)


def flat_lrp_connections(a: torch.Tensor, connections: torch.Tensor, rel_out: torch.Tensor) -> torch.Tensor:
    """Flat rule on a layer whose (J x K) boolean ``connections`` say which input feeds which output (an
    unfolded convolution): every connected input gets an equal share of each output's relevance."""
    ones = connections.to(a.dtype)
    z = torch.ones_like(a) @ ones.T
    return (rel_out / stabilize(z)) @ ones


def sum_lrp(a: torch.Tensor, b: torch.Tensor, rel_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = a + b: R_a = a * R_y / stab(y), R_b = b * R_y / stab(y), the operands' shares of the sum."""
    g = rel_out / stabilize(a + b)
    return a * g, b * g


def toeplitz(conv: nn.Conv2d, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The dense matrix T (J*P x C*H*W) with T @ x.flatten() == conv(x).flatten() - bias, and the
    index (into weight.flatten()) that each structural non-zero of T stands for (-1 elsewhere)."""
    weight = conv.weight.detach()
    j_out, c_per_group, kh, kw = weight.shape
    c_in, groups = conv.in_channels, conv.groups
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    if conv.padding == "same":
        pads = []
        for k, d in ((kh, dh), (kw, dw)):
            total = d * (k - 1)
            pads.append(total // 2)
        ph, pw = pads
        oh, ow = height, width
    else:
        ph, pw = (0, 0) if conv.padding == "valid" else conv.padding
        oh = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    t = torch.zeros(j_out * oh * ow, c_in * height * width, dtype=weight.dtype)
    index = torch.full(t.shape, -1, dtype=torch.long)
    out_per_group = j_out // groups
    for j, y, x, c, u, v in itertools.product(
        range(j_out), range(oh), range(ow), range(c_per_group), range(kh), range(kw)
    ):
        h, w = y * sh + u * dh - ph, x * sw + v * dw - pw
        if 0 <= h < height and 0 <= w < width:
            channel = (j // out_per_group) * c_per_group + c
            row, col = (j * oh + y) * ow + x, (channel * height + h) * width + w
            t[row, col] = weight[j, c, u, v]
            index[row, col] = ((j * c_per_group + c) * kh + u) * kw + v
    return t, index, (oh, ow)


def toeplitz_weight_relevance(index: torch.Tensor, a_sum: torch.Tensor, b_sum: torch.Tensor, numel: int):
    """FC parameter relevance A_k + B_j of every structural connection of the Toeplitz matrix,
    summed onto the shared conv weight each connection stands for (the definition, naively)."""
    rows, cols = torch.nonzero(index >= 0, as_tuple=True)
    per_connection = b_sum.flatten()[rows] + a_sum.flatten()[cols]
    return torch.zeros(numel, dtype=per_connection.dtype).index_add_(0, index[rows, cols], per_connection)
