"""Turning scores into masks, and owning those masks on the model.

A pruning criterion is a tensor of scores per weight (``flexrel_core.scores``); this module turns
scores into boolean masks (True = kept) by removing the lowest-scored weights (a pruning factor p
removes that fraction of the prunable weights; ``docs/method.md``, "Pruning factor"), by selection
in linear time on the scores' device (``lowest_k``). Masks live on each pruned module as a boolean
buffer ``flexrel_mask`` and are multiplied into ``weight`` -- no ``torch.nn.utils.prune``
reparametrisation, because LRP rules that modify ``weight`` would act on a stale tensor
(``docs/method.md``, "Pitfalls"). ``to_torch_prune`` exports the same masks to that module for users
who want them there.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .hostarrays import host_array
from .layers import check_score_dict, current_weight, prunable_layers

MASK_BUFFER = "flexrel_mask"
SCOPES = ("global", "layer", "output")


def check_amount(amount: float) -> float:
    """Return ``amount`` as float if it is a pruning factor in [0, 1), else raise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"pruning factor must be a number in [0, 1), got {amount!r}")
    if not math.isfinite(amount) or not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning factor must be in [0, 1) (fraction of prunable weights removed), got {amount!r}")
    return float(amount)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask (True = kept) of every prunable weight; all-True where the layer is unpruned.
    Reads ``torch.nn.utils.prune``'s ``weight_mask`` where ``to_torch_prune`` moved the mask there."""
    masks = {}
    for name, m in prunable_layers(model, torch_prune=True).items():
        mask = m.weight_mask.bool() if hasattr(m, "weight_orig") else getattr(m, MASK_BUFFER, None)
        masks[name] = mask if mask is not None else torch.ones_like(m.weight, dtype=torch.bool)
    return masks


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach ``masks`` to the model as buffers and zero the masked weights."""
    layers = prunable_layers(model)
    for name, mask in masks.items():
        module = layers[name]
        mask = mask.to(device=module.weight.device, dtype=torch.bool)
        if MASK_BUFFER in module._buffers:
            module._buffers[MASK_BUFFER] = mask
        else:
            module.register_buffer(MASK_BUFFER, mask)
    apply_masks(model)


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Zero every pruned weight: exactly +0.0 (``mul_`` would leave -0.0 for negative weights, a
    sign bit that a sparse encoding does not carry). One ``where`` in place: no inverted mask."""
    for m in prunable_layers(model).values():
        mask = getattr(m, MASK_BUFFER, None)
        if mask is not None:
            torch.where(mask, m.weight, m.weight.new_zeros(()), out=m.weight)


@torch.no_grad()
def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (call between ``backward()`` and ``optimizer.step()``)."""
    for m in prunable_layers(model).values():
        mask = getattr(m, MASK_BUFFER, None)
        if mask is not None and m.weight.grad is not None:
            m.weight.grad.masked_fill_(~mask, 0.0)


def prune(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    amount: float,
    *,
    scope: str = "global",
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Remove the ``round(amount * N)`` lowest-scored prunable weights and return the masks.

    ``amount`` is the fraction of *all* prunable weights (N of them; per layer with
    ``scope="layer"``; per output neuron with ``scope="output"``: each row of a Linear weight, each
    output channel of a Conv2d, Wanda's comparison group), the count ``torch.nn.utils.prune`` uses.
    Weights already pruned count towards it and are removed first, so pruning a pruned model to a
    larger amount keeps every earlier cut. Ties are broken deterministically by position: layers in model order, then
    row-major order inside a weight -- the masks a stable sort of the scores gives, found here by
    selection in linear time (``lowest_k``) without sorting. Scores are compared in their own dtype
    (several dtypes: the promoted one; integers as float64) on ``device`` (default: the first
    score's device). The masks are attached to the model (see ``set_masks``, on the weights'
    devices) and returned as ``{parameter name: bool tensor}``.
    """
    amount = check_amount(amount)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    check_score_dict(model, scores)
    layers = prunable_layers(model)
    old = {n: getattr(m, MASK_BUFFER, None) for n, m in layers.items()}
    groups = [list(layers)] if scope == "global" else [[name] for name in layers]
    dev = torch.device(device) if device is not None else scores[next(iter(layers))].device
    new: dict[str, torch.Tensor] = {}
    if scope == "output":
        for name, module in layers.items():
            kept = None if old[name] is None else old[name].to(dev)
            new[name] = lowest_per_row(scores[name].detach().to(dev), kept, amount, name).view_as(module.weight)
        groups = []
    for names in groups:
        total = sum(layers[n].weight.numel() for n in names)
        k = round(amount * total)
        already = sum(old[n].numel() - int(torch.count_nonzero(old[n])) for n in names if old[n] is not None)
        if k < already:
            raise ValueError(
                f"{', '.join(names) if scope == 'layer' else 'the model'} already has {already} of "
                f"{total} weights pruned, more than amount={amount} removes ({k}); masks only shrink, "
                "so ask for an amount at least the current sparsity"
            )
        kept = [None if old[n] is None else old[n].to(dev) for n in names]
        keep = lowest_k([scores[n].detach().to(dev) for n in names], kept, k - already)
        new.update({n: part.view_as(layers[n].weight) for n, part in zip(names, keep, strict=True)})
    set_masks(model, new)
    return {n: m.clone() for n, m in get_masks(model).items()}


@torch.no_grad()
def lowest_per_row(score: torch.Tensor, kept: torch.Tensor | None, amount: float, name: str) -> torch.Tensor:
    """Keep-mask of a weight after removing ``round(amount * row length)`` weights of every output
    row (dim 0 first, the rest flattened): already pruned weights first, then the lowest-scored
    kept ones, ties by position within the row (a stable sort, as ``lowest_k``)."""
    rows = score.reshape(score.shape[0], -1)
    dtype = rows.dtype if rows.dtype.is_floating_point else torch.float64
    rows = rows.to(dtype=dtype, copy=True)
    k = round(amount * rows.shape[1])
    if kept is not None:
        kept = kept.reshape(rows.shape).bool()
        already = int((rows.shape[1] - kept.sum(1)).max())
        if k < already:
            raise ValueError(
                f"{name} has a row with {already} of {rows.shape[1]} weights pruned, more than amount={amount} "
                f"removes per row ({k}); masks only shrink, so ask for an amount at least the current sparsity"
            )
        rows.masked_fill_(~kept, -math.inf)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if k:
        keep.scatter_(1, torch.sort(rows, dim=1, stable=True).indices[:, :k], False)
    return keep


SAMPLE = 1 << 18  # scores drawn to bracket the threshold (selection cost does not depend on it)
# The few array operations selection needs, for numpy arrays (CPU tensors, see ``hostarrays``) and torch tensors.
_NUMPY = SimpleNamespace(
    count=np.count_nonzero,
    cat=np.concatenate,
    positions=np.flatnonzero,
    ones=lambda s: np.ones(len(s), dtype=bool),
    copy=np.copy,
)
_TORCH = SimpleNamespace(
    count=torch.count_nonzero,
    cat=torch.cat,
    positions=lambda m: torch.nonzero(m).squeeze(1),
    ones=lambda s: torch.ones_like(s, dtype=torch.bool),
    copy=torch.clone,
)


@torch.no_grad()
def lowest_k(scores: list[torch.Tensor], kept: list[torch.Tensor | None], k: int) -> list[torch.Tensor]:
    """Flat keep-masks after removing the ``k`` lowest of the kept scores, ties by position.

    ``scores`` are tensors on one device, read in order as one flat sequence (each row-major);
    ``kept[i]`` is a boolean mask of the positions still in play (``None``: all of them). The
    removed positions are exactly the first ``k`` kept ones of a stable ascending sort: every kept
    score below the ``k``-th smallest kept score t, then the first of the scores equal to t in
    position order. t is found by selection: a seeded sample of the scores brackets it in
    [lo, hi], one pass counts the scores below lo and gathers those inside, ``kthvalue`` picks t
    among them (the whole kept set if the bracket misses, which changes the time, not the result);
    a last pass writes the masks. Linear time, no sort, and no copy of the scores unless their
    dtypes differ (comparisons are then made in the promoted dtype, as a float64 conversion would:
    every float converts exactly into a wider float, so no two scores merge or swap). CPU tensors
    are read through numpy (``hostarrays``), others with torch operations on their device.
    """
    dtype = functools.reduce(torch.promote_types, [s.dtype for s in scores])
    dtype = dtype if dtype.is_floating_point else torch.float64
    flat = [s.reshape(-1).to(dtype) for s in scores]
    kept = [None if m is None else m.reshape(-1).bool() for m in kept]
    arrays = [host_array(s) for s in flat]
    masks = [None if m is None else host_array(m) for m in kept]
    if all(a is not None for a in arrays) and all(a is not None or m is None for a, m in zip(masks, kept, strict=True)):
        return [torch.from_numpy(m) for m in _select(arrays, masks, k, _NUMPY)]
    return _select(flat, kept, k, _TORCH)


def _select(flat: list, kept: list, k: int, xp: SimpleNamespace) -> list:
    """``lowest_k`` on numpy arrays or torch tensors (``xp`` names the operations that differ)."""
    pairs = list(zip(flat, kept, strict=True))
    if k == 0:
        return [xp.ones(s) if m is None else xp.copy(m) for s, m in pairs]
    lo, hi = _bracket(flat, kept, k, xp)
    below, inside = 0, []
    for s, m in pairs:
        low, high = s < lo, s <= hi
        if m is not None:
            low &= m
            high &= m
        below += int(xp.count(low))
        high ^= low  # lo <= s <= hi (low is a subset of high)
        inside.append(s[high])
    cand = xp.cat(inside)
    if not below < k <= below + len(cand):  # the sample missed: select among every kept score
        below, cand = 0, xp.cat([s if m is None else s[m] for s, m in pairs])
    t = torch.as_tensor(cand).kthvalue(k - below).values.item()  # exact: a value of the scores' dtype
    tied = int(xp.count(cand == t))
    cut_ties = k - below - int(xp.count(cand < t))  # the first cut_ties equal to t go, the rest stay
    keep, seen = [], 0
    for s, m in pairs:
        out = s > t
        if m is not None:
            out &= m
        if cut_ties < tied:
            tie = s == t
            if m is not None:
                tie &= m
            positions = xp.positions(tie)
            out[positions[max(0, cut_ties - seen) :]] = True
            seen += len(positions)
        keep.append(out)
    return keep


def _bracket(flat: list, kept: list, k: int, xp: SimpleNamespace) -> tuple[float, float]:
    """(lo, hi) likely to hold the ``k``-th smallest kept score: sample quantiles six standard
    errors either side of rank k (the whole line when there are few scores or the sample is thin)."""
    sizes = [len(s) for s in flat]
    inf = (-math.inf, math.inf)
    if sum(sizes) <= SAMPLE:
        return inf
    idx = np.sort(np.random.default_rng(0).integers(0, sum(sizes), SAMPLE))
    parts = []
    for s, m, start, stop in zip(flat, kept, np.cumsum([0] + sizes[:-1]), np.cumsum(sizes), strict=True):
        local = idx[(idx >= start) & (idx < stop)] - start
        local = local if xp is _NUMPY else torch.from_numpy(local).to(s.device)
        v = s[local] if m is None else s[local][m[local]]
        parts.append(v.astype(np.float64) if xp is _NUMPY else v.double().cpu().numpy())  # float64: exact
    sample = np.sort(np.concatenate(parts))
    kept_total = sum(n if m is None else int(xp.count(m)) for n, m in zip(sizes, kept, strict=True))
    q, size = k / kept_total, len(sample)
    if size < 1000:
        return inf
    spread = 6.0 * math.sqrt(size * q * (1.0 - q)) + 2.0
    first, last = math.floor(q * size - spread), math.ceil(q * size + spread)
    lo = float(sample[first]) if first > 0 else -math.inf
    hi = float(sample[last]) if last < size - 1 else math.inf
    return lo, hi


@torch.no_grad()
def sparsity(model: nn.Module) -> dict:
    """Fraction of prunable weights that are exactly zero: ``{"overall": f, "layers": {name: f}}``.

    Measured on the weights themselves (what is stored and transmitted), not on the masks; after
    ``to_torch_prune``, on ``weight_orig * weight_mask``, the weight the next forward computes with.
    """
    weights = {n: current_weight(m) for n, m in prunable_layers(model, torch_prune=True).items()}
    zeros = {n: w.numel() - int(torch.count_nonzero(w)) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return {
        "overall": sum(zeros.values()) / total,
        "layers": {n: zeros[n] / weights[n].numel() for n in weights},
    }


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Move FlexRel's masks into ``torch.nn.utils.prune`` reparametrisations, in place.

    Afterwards each pruned module has ``weight_orig``, ``weight_mask`` and a forward pre-hook,
    exactly as ``torch.nn.utils.prune.custom_from_mask`` leaves it; layers exported already are left
    as they are. Returns the model.
    """
    for m in prunable_layers(model, torch_prune=True).values():
        mask = m._buffers.pop(MASK_BUFFER, None)
        if mask is not None:
            torch_prune.custom_from_mask(m, "weight", mask)
    return model


def from_torch_prune(model: nn.Module) -> nn.Module:
    """Inverse of ``to_torch_prune``: make torch-pruned weights permanent and keep their masks as FlexRel masks."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and hasattr(m, "weight_orig"):
            mask = m.weight_mask.detach().bool().clone()
            torch_prune.remove(m, "weight")
            m.register_buffer(MASK_BUFFER, mask)
    apply_masks(model)
    return model


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """``model.load_state_dict`` that first creates the mask buffers a pruned checkpoint carries."""
    layers = prunable_layers(model)
    suffix = "." + MASK_BUFFER
    for key, value in state_dict.items():
        if key.endswith(suffix):
            weight_name = key[: -len(suffix)] + ".weight"
            if weight_name not in layers:
                raise ValueError(f"checkpoint has a mask for {weight_name!r}, which is not a prunable weight")
            module = layers[weight_name]
            if MASK_BUFFER not in module._buffers:
                module.register_buffer(MASK_BUFFER, torch.ones_like(value, dtype=torch.bool))
    model.load_state_dict(state_dict)
    apply_masks(model)
    return model
