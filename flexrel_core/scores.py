"""FlexRel scores: s = (1 - delta) * M_norm + delta * R_norm (FlexRel, Sec. "Combining").

Magnitude M(w) = |w| is the training-time information; parameter relevance R (``relevance.py``)
the inference-time information. Both are min-max normalised to [0, 1], per layer or over the
whole model. Default ``normalize="layer"``: convolutional relevance sums over every output
position, so its raw scale dwarfs that of FC layers and one global min-max would let the conv
layers' relevance (or the FC layers') decide alone; per layer, each layer's M and R span [0, 1]
and delta weighs them on equal footing. With ``normalize="global"`` and ``scope="global"``,
delta = 0 is exactly classic global magnitude pruning. Scores are float64 so that min-max
normalisation never merges two distinct magnitudes into a tie.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import check_score_dict, prunable_layers
from .relevance import parameter_relevance

METHODS = ("flexrel", "magnitude", "relevance")
NORMALIZATIONS = ("layer", "global")


def check_delta(delta: float) -> float:
    """Return ``delta`` as float if it lies in [0, 1], else raise ``ValueError``."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a number in [0, 1] (weight of relevance), got {delta!r}")
    if not math.isfinite(delta) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1] (0 = magnitude pruning, 1 = relevance pruning), got {delta!r}")
    return float(delta)


def magnitude(model: nn.Module) -> dict[str, torch.Tensor]:
    """M(w) = |w| for every prunable weight, float64."""
    return {name: m.weight.detach().abs().double() for name, m in prunable_layers(model).items()}


def _minmax(t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    span = hi - lo
    if span <= 0:  # a constant tensor carries no ranking: zeros, never NaN
        return torch.zeros_like(t)
    return (t - lo) / span


def normalize_scores(scores: dict[str, torch.Tensor], mode: str = "layer") -> dict[str, torch.Tensor]:
    """Min-max normalise each tensor to [0, 1] (``"layer"``) or all of them jointly (``"global"``)."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    scores = {n: s.double() for n, s in scores.items()}
    if mode == "layer":
        return {n: _minmax(s, s.min(), s.max()) for n, s in scores.items()}
    lo = min(s.min() for s in scores.values())
    hi = max(s.max() for s in scores.values())
    return {n: _minmax(s, lo, hi) for n, s in scores.items()}


def pruning_scores(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    method: str = "flexrel",
    delta: float = 0.5,
    normalize: str = "layer",
    relevance: dict[str, torch.Tensor] | None = None,
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
) -> dict[str, torch.Tensor]:
    """Per-weight pruning scores (higher = keep), ``{"<module>.weight": float64 tensor}``.

    ``method="flexrel"`` gives s = (1 - delta) * M_norm + delta * R_norm; ``"magnitude"`` is
    delta = 0 and ``"relevance"`` delta = 1 (``delta`` is then ignored). Relevance comes from
    ``relevance`` when given (a dict from ``parameter_relevance``, so a delta sweep costs one LRP
    pass), else from one LRP pass over ``inputs``; magnitude pruning needs neither.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    delta = {"magnitude": 0.0, "relevance": 1.0}.get(method, check_delta(delta))
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    m_norm = normalize_scores(magnitude(model), normalize)
    if delta == 0.0:
        return m_norm
    if relevance is None:
        if inputs is None:
            raise ValueError(f"method={method!r} with delta={delta} needs inference `inputs` or a `relevance` dict")
        relevance = parameter_relevance(model, inputs, targets, composite=composite, aggregate=aggregate)
    check_score_dict(model, relevance, "relevance")
    r_norm = normalize_scores(relevance, normalize)
    return {n: (1.0 - delta) * m_norm[n] + delta * r_norm[n].to(m_norm[n].device) for n in m_norm}
