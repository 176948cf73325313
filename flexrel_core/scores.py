"""FlexRel scores: s = (1 - delta) * M_norm + delta * R_norm (FlexRel, Sec. "Combining").

Magnitude M(w) = |w| is the training-time information; parameter relevance R (``relevance.py``)
the inference-time information. Both are min-max normalised to [0, 1] over the whole model by
default (``normalize="global"``): the plain reading of the paper, and the only one in which
δ = 0 with one global threshold is exactly the standard global magnitude pruning
(``torch.nn.utils.prune.global_unstructured`` with L1) that every pruning paper compares against.
``normalize="layer"`` min-max normalises each layer on its own; with one global threshold that
moves the cut between layers (every layer's scores span [0, 1] whatever its importance), so it
is offered as an ablation. Scores are float64 so that min-max normalisation never merges two
distinct magnitudes into a tie. ``shuffle_within_layers`` is the control that keeps each layer's
values and destroys their ranking.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import check_score_dict, prunable_layers
from .relevance import parameter_relevance

# The three pruning techniques the paper compares, in the order every table and figure shows them.
METHODS = ("magnitude", "relevance", "flexrel")
NORMALIZATIONS = ("layer", "global")


def check_delta(delta: float) -> float:
    """Return ``delta`` as float if it lies in [0, 1], else raise ``ValueError``."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a number in [0, 1] (weight of relevance), got {delta!r}")
    if not math.isfinite(delta) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1] (0 = magnitude pruning, 1 = relevance pruning), got {delta!r}")
    return float(delta)


def method_delta(method: str, delta: float) -> float:
    """The δ a method stands for: magnitude pruning is δ = 0, relevance pruning δ = 1, FlexRel ``delta``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return {"magnitude": 0.0, "relevance": 1.0}.get(method, check_delta(delta))


def magnitude(model: nn.Module) -> dict[str, torch.Tensor]:
    """M(w) = |w| for every prunable weight, float64."""
    return {name: m.weight.detach().abs().double() for name, m in prunable_layers(model).items()}


def normalize_scores(scores: dict[str, torch.Tensor], mode: str = "global") -> dict[str, torch.Tensor]:
    """Min-max normalise each tensor to [0, 1] (``"layer"``) or all of them jointly (``"global"``), float64."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    ranges = _joint({n: (float(s.min()), float(s.max())) for n, s in scores.items()}, mode)
    return {n: _minmax_(s.to(dtype=torch.float64, copy=True), *ranges[n]) for n, s in scores.items()}


def pruning_scores(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    method: str = "flexrel",
    delta: float = 0.5,
    normalize: str = "global",
    relevance: dict[str, torch.Tensor] | None = None,
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    engine: str = "auto",
) -> dict[str, torch.Tensor]:
    """Per-weight pruning scores (higher = keep), ``{"<module>.weight": float64 tensor}``.

    ``method="flexrel"`` gives s = (1 - delta) * M_norm + delta * R_norm; ``"magnitude"`` is
    delta = 0 and ``"relevance"`` delta = 1 (``delta`` is then ignored). Relevance comes from
    ``relevance`` when given (a dict from ``parameter_relevance``, so a delta sweep costs one LRP
    pass), else from one LRP pass over ``inputs`` (``engine``: see ``parameter_relevance``);
    magnitude pruning needs neither.
    """
    delta = method_delta(method, delta)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    weights = {n: m.weight.detach() for n, m in prunable_layers(model).items()}
    if delta > 0.0 and relevance is None:
        if inputs is None:
            raise ValueError(f"method={method!r} with delta={delta} needs inference `inputs` or a `relevance` dict")
        relevance = parameter_relevance(model, inputs, targets, composite=composite, aggregate=aggregate, engine=engine)
    if relevance is not None:
        check_score_dict(model, relevance, "relevance")
    # Layer by layer and in place: a model-sized float64 tensor exists once (the result), not per term.
    m_range = _joint({n: (float(w.abs().min()), float(w.abs().max())) for n, w in weights.items()}, normalize)
    r_range = _joint({n: (float(r.min()), float(r.max())) for n, r in relevance.items()}, normalize) if delta else {}
    scores = {}
    for n, w in weights.items():
        s = _minmax_(w.abs().double(), *m_range[n])
        if delta > 0.0:
            r = _minmax_(relevance[n].to(device=s.device, dtype=torch.float64, copy=True), *r_range[n])
            s.mul_(1.0 - delta).add_(r, alpha=delta)
        scores[n] = s
    return scores


def shuffle_within_layers(scores: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Each tensor's values permuted at random (seeded) within the tensor: every layer keeps its
    multiset of values -- hence how a global threshold shares the cut between layers -- while
    which weight gets which value is destroyed. Applied to relevance, it tells per-weight
    relevance apart from relevance's allocation of the cut between layers."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, s in scores.items():
        order = torch.randperm(s.numel(), generator=generator).to(s.device)
        out[name] = s.flatten()[order].view_as(s).clone()
    return out


def _joint(own: dict[str, tuple[float, float]], mode: str) -> dict[str, tuple[float, float]]:
    """(min, max) that min-max normalisation uses for each tensor: its own, or the joint one."""
    if mode == "layer":
        return own
    joint = (min(lo for lo, _ in own.values()), max(hi for _, hi in own.values()))
    return {n: joint for n in own}


def _minmax_(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """In-place (t - lo) / (hi - lo); a constant range gives zeros, never NaN."""
    return t.zero_() if hi - lo <= 0 else t.sub_(lo).div_(hi - lo)
