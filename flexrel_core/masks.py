"""Turning scores into masks, and owning those masks on the model.

A pruning criterion is a tensor of scores per weight (``flexrel_core.scores``); this module turns
scores into boolean masks (True = kept) by removing the lowest-scored weights (``docs/method.md``,
"Pruning factor"). Masks live on each pruned module as a boolean buffer ``flexrel_mask`` and are multiplied
into ``weight`` -- no ``torch.nn.utils.prune`` reparametrisation, because LRP rules that modify
``weight`` would act on a stale tensor (``docs/method.md``, "Pitfalls"). ``to_torch_prune`` exports
the same masks to that module for users who want them there.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .layers import check_score_dict, prunable_layers

MASK_BUFFER = "flexrel_mask"
SCOPES = ("global", "layer")


def check_amount(amount: float) -> float:
    """Return ``amount`` as float if it is a pruning factor in [0, 1), else raise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"pruning factor must be a number in [0, 1), got {amount!r}")
    if not math.isfinite(amount) or not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning factor must be in [0, 1) (fraction of prunable weights removed), got {amount!r}")
    return float(amount)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask (True = kept) of every prunable weight; all-True where the layer is unpruned."""
    masks = {}
    for name, m in prunable_layers(model).items():
        mask = getattr(m, MASK_BUFFER, None)
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
    sign bit that a sparse encoding does not carry)."""
    for m in prunable_layers(model).values():
        mask = getattr(m, MASK_BUFFER, None)
        if mask is not None:
            m.weight.masked_fill_(~mask, 0.0)


@torch.no_grad()
def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (call between ``backward()`` and ``optimizer.step()``)."""
    for m in prunable_layers(model).values():
        mask = getattr(m, MASK_BUFFER, None)
        if mask is not None and m.weight.grad is not None:
            m.weight.grad.masked_fill_(~mask, 0.0)


def prune(
    model: nn.Module, scores: dict[str, torch.Tensor], amount: float, *, scope: str = "global"
) -> dict[str, torch.Tensor]:
    """Remove the ``round(amount * N)`` lowest-scored prunable weights and return the masks.

    ``amount`` is the fraction of *all* prunable weights (N of them; per layer with
    ``scope="layer"``), the count ``torch.nn.utils.prune`` uses. Weights already pruned count
    towards it and are removed first, so pruning a pruned model to a larger amount keeps every
    earlier cut. Ties are broken deterministically by position: layers in model order, then
    row-major order inside a weight (a stable sort of the scores). The masks are attached to the
    model (see ``set_masks``) and returned as ``{parameter name: bool tensor}``.
    """
    amount = check_amount(amount)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    check_score_dict(model, scores)
    old = get_masks(model)
    groups = [list(old)] if scope == "global" else [[name] for name in old]
    new: dict[str, torch.Tensor] = {}
    for names in groups:
        flat = torch.cat(
            [torch.where(old[n].flatten().cpu(), scores[n].detach().flatten().cpu().double(), -math.inf) for n in names]
        )
        k = round(amount * flat.numel())
        already = int(torch.isinf(flat).sum())
        if k < already:
            raise ValueError(
                f"{', '.join(names) if scope == 'layer' else 'the model'} already has {already} of "
                f"{flat.numel()} weights pruned, more than amount={amount} removes ({k}); masks only shrink, "
                "so ask for an amount at least the current sparsity"
            )
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[:k]] = False
        for n, part in zip(names, torch.split(keep, [old[n].numel() for n in names]), strict=True):
            new[n] = part.view_as(old[n])
    set_masks(model, new)
    return {n: m.clone() for n, m in get_masks(model).items()}


@torch.no_grad()
def sparsity(model: nn.Module) -> dict:
    """Fraction of prunable weights that are exactly zero: ``{"overall": f, "layers": {name: f}}``.

    Measured on the weights themselves (what is stored and transmitted), not on the masks.
    """
    layers = prunable_layers(model)
    zeros = {n: int((m.weight == 0).sum()) for n, m in layers.items()}
    total = sum(m.weight.numel() for m in layers.values())
    return {
        "overall": sum(zeros.values()) / total,
        "layers": {n: zeros[n] / layers[n].weight.numel() for n in layers},
    }


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Move FlexRel's masks into ``torch.nn.utils.prune`` reparametrisations, in place.

    Afterwards each pruned module has ``weight_orig``, ``weight_mask`` and a forward pre-hook,
    exactly as ``torch.nn.utils.prune.custom_from_mask`` leaves it. Returns the model.
    """
    for m in prunable_layers(model).values():
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
