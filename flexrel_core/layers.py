"""Which layers FlexRel prunes, and refusal of the ones it cannot handle.

FlexRel (Chiasserini et al., 2025) scores the weights of fully connected and convolutional layers;
biases and normalisation layers are never pruned (``docs/method.md``, "What is pruned").
"""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
# Layers with parameters that are left dense. BatchNorm is merged into the preceding layer by a
# zennit canonizer before LRP, so it never needs a rule of its own.
DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)


def prunable_layers(model: nn.Module, *, torch_prune: bool = False) -> dict[str, nn.Module]:
    """Map ``"<module>.weight"`` (as in ``model.named_parameters()``) to each prunable module.

    Raises ``ValueError`` for a model without ``nn.Linear``/``nn.Conv2d`` layers, for a leaf module
    with parameters of a type FlexRel does not handle (e.g. ``nn.Conv1d``, ``nn.LSTM``), and, unless
    ``torch_prune`` (functions that only read weights through ``current_weight``, such as ``sparsity``),
    for a model still carrying ``torch.nn.utils.prune`` reparametrisations.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            if hasattr(module, "weight_orig") and not torch_prune:
                raise ValueError(
                    f"layer {name!r} carries a torch.nn.utils.prune reparametrisation (weight_orig * "
                    "weight_mask): its weight is recomputed from weight_orig at every forward, so LRP rules, "
                    "FlexRel's masks and the sparse encoding would act on a stale tensor; convert it first "
                    "with flexrel_core.from_torch_prune(model)"
                )
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                raise ValueError(
                    f"layer {name!r} uses padding_mode={module.padding_mode!r}; FlexRel's conv-as-FC "
                    "relevance supports padding_mode='zeros' only"
                )
            layers[f"{name}.weight" if name else "weight"] = module
        elif isinstance(module, DENSE_TYPES):
            continue
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(
                f"unsupported layer type {type(module).__name__} at {name!r}: FlexRel prunes "
                "nn.Linear and nn.Conv2d weights and leaves BatchNorm dense; other layers with "
                "parameters are not supported"
            )
    if not layers:
        raise ValueError(f"{type(model).__name__} has no prunable layers: expected at least one nn.Linear or nn.Conv2d")
    return layers


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding a Conv2d applies, for ``F.pad``; ``"same"`` pads
    ``dilation * (kernel - 1)`` in total, the extra one on the right/bottom, as ``F.conv2d`` does."""
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":
        (top, bottom), (left, right) = (
            (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
            for k, d in zip(conv.kernel_size, conv.dilation, strict=True)
        )
        return left, right, top, bottom
    ph, pw = conv.padding
    return pw, pw, ph, ph


def current_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: ``weight_orig * weight_mask`` under a ``torch.nn.utils.prune``
    reparametrisation (what its next forward uses, even after an optimiser step), else ``weight``."""
    if hasattr(module, "weight_orig"):
        return module.weight_orig * module.weight_mask
    return module.weight


def prunable_count(model: nn.Module) -> int:
    """Number N of prunable weights (the base of every pruning factor); accepts torch-pruned models."""
    return sum(
        m.weight_mask.numel() if hasattr(m, "weight_orig") else m.weight.numel()
        for m in prunable_layers(model, torch_prune=True).values()
    )


def check_score_dict(model: nn.Module, scores: dict[str, torch.Tensor], what: str = "scores") -> None:
    """Refuse a score dict whose keys or shapes do not match the model's prunable weights."""
    layers = prunable_layers(model)
    if not isinstance(scores, dict):
        raise TypeError(f"{what} must be a dict {{parameter name: tensor}}, got {type(scores).__name__}")
    missing = sorted(set(layers) - set(scores))
    extra = sorted(set(scores) - set(layers))
    if missing or extra:
        raise ValueError(
            f"{what} keys must be the prunable weights {sorted(layers)}; missing {missing}, unexpected {extra}"
        )
    for name, module in layers.items():
        s = scores[name]
        if tuple(s.shape) != tuple(module.weight.shape):
            raise ValueError(f"{what}[{name!r}] has shape {tuple(s.shape)}, expected {tuple(module.weight.shape)}")
        # min and max are finite exactly when every value is (NaN propagates): two reductions, no copy
        if s.is_floating_point() and s.numel() and not torch.isfinite(torch.stack(torch.aminmax(s))).all():
            raise ValueError(f"{what}[{name!r}] contains NaN or infinite values")
