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

from . import data_scores
from .layers import check_score_dict, prunable_layers
from .relevance import parameter_relevance

# The three pruning techniques the paper compares, in the order every table and figure shows them.
METHODS = ("magnitude", "relevance", "flexrel")
# Data-aware baselines (``data_scores``) and FlexRel with the Taylor score in place of relevance.
BASELINES = (*data_scores.BASELINES, "flexrel_taylor")
ALL_METHODS = (*METHODS, *BASELINES)
# The inference-time signal (other than LRP relevance) each baseline reads: computed once, passed as ``signal``.
SIGNALS = {"wanda": "wanda", "taylor": "taylor", "flexrel_taylor": "taylor"}
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
        check_method(method)
        raise ValueError(f"method {method!r} is not a blend of magnitude and relevance: it has no δ of its own")
    return {"magnitude": 0.0, "relevance": 1.0}.get(method, check_delta(delta))


def check_method(method: str) -> str:
    """Return ``method`` if ``pruning_scores`` knows it, else raise ``ValueError`` listing the valid ones."""
    if method not in ALL_METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {ALL_METHODS} (the paper's {METHODS}, the data-aware "
            f"baselines {data_scores.BASELINES}, or the control 'flexrel_taylor')"
        )
    return method


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
    signal: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight pruning scores (higher = keep), ``{"<module>.weight": float64 tensor}``.

    ``method="flexrel"`` gives s = (1 - delta) * M_norm + delta * R_norm; ``"magnitude"`` is
    delta = 0 and ``"relevance"`` delta = 1 (``delta`` is then ignored). Relevance comes from
    ``relevance`` when given (a dict from ``parameter_relevance``, so a delta sweep costs one LRP
    pass), else from one LRP pass over ``inputs`` (``engine``: see ``parameter_relevance``);
    magnitude pruning needs neither.

    Baselines (``data_scores``): ``"wanda"`` (|w|·‖X‖₂) and ``"taylor"`` (|w·∂L/∂w|, cross-entropy
    against the predicted class, or ``targets`` when given) are returned raw: a single score under
    one global threshold needs no normalisation (min-max would not change its ranking), and
    ``normalize`` does not apply to them. ``"random"`` gives uniform scores seeded by ``seed``.
    ``"flexrel_taylor"`` is s = (1 - delta) * M_norm + delta * T_norm with the Taylor score T
    normalised like R (``normalize``). Wanda's and Taylor's scores come from ``signal`` when given
    (``data_scores.wanda`` / ``taylor`` computed once), else from ``inputs`` (``batch_size``
    samples per pass).
    """
    check_method(method)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if method == "random":
        return data_scores.random_scores(model, seed)
    if method in SIGNALS:
        if signal is None:
            if inputs is None:
                raise ValueError(f"method={method!r} needs inference `inputs` or a precomputed `signal` dict")
            compute = data_scores.wanda if SIGNALS[method] == "wanda" else data_scores.taylor
            extra = {} if SIGNALS[method] == "wanda" else {"targets": targets}
            signal = compute(model, inputs, batch_size=batch_size, **extra)
        check_score_dict(model, signal, SIGNALS[method])
        if method != "flexrel_taylor":
            return {n: s.to(dtype=torch.float64, copy=True) for n, s in signal.items()}
        method, relevance = "flexrel", signal
    delta = method_delta(method, delta)
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
