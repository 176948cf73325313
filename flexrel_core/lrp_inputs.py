"""What an LRP pass takes and where it starts, shared by both relevance engines.

- ``check_inputs`` / ``check_targets``: refuse empty or misshapen batches and class indices out of range.
- ``start_relevance``: LRP starts from the logit of the target class (Bach et al. 2015; default target:
  the predicted class, since inference data comes without labels): ``one_hot(target) * logits``.
- ``memory_error``: an out-of-memory error that says so and suggests a smaller ``batch_size``
  (relevance is a sum over samples, so splitting the batch gives the same result).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import prunable_layers

_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory")


def check_inputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Refuse empty or misshapen inputs with a message that names the expected shape."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor of samples, got {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (n, ...) of samples, got shape {tuple(inputs.shape)}")
    first = next(iter(prunable_layers(model).values()))
    if isinstance(first, nn.Conv2d) and (inputs.ndim != 4 or inputs.shape[1] != first.in_channels):
        raise ValueError(
            f"inputs of shape {tuple(inputs.shape)} do not fit the model: its first layer is a Conv2d "
            f"expecting (n, {first.in_channels}, H, W)"
        )
    return inputs


def check_targets(targets: torch.Tensor | None, n: int, classes: int) -> torch.Tensor | None:
    """``targets`` as a flat long tensor of ``n`` class indices in [0, classes), or None."""
    if targets is None:
        return None
    targets = torch.as_tensor(targets).long().flatten()
    if targets.numel() != n:
        raise ValueError(f"targets must give one class per sample ({n}), got {targets.numel()}")
    if targets.min() < 0 or targets.max() >= classes:
        raise ValueError(
            f"targets must be class indices in [0, {classes}), got range [{targets.min()}, {targets.max()}]"
        )
    return targets


def start_relevance(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Initial relevance ``one_hot(t) * logits``, t = ``targets`` or the predicted class (argmax)."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape (n, classes), got {tuple(logits.shape)}")
    t = check_targets(targets, logits.shape[0], logits.shape[1])
    t = logits.argmax(1) if t is None else t.to(logits.device)
    return torch.zeros_like(logits).scatter_(1, t[:, None], 1.0) * logits.detach()


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's out-of-memory errors, on CUDA (``torch.OutOfMemoryError``) and the CPU."""
    return isinstance(err, torch.OutOfMemoryError) or any(s in str(err).lower() for s in _OUT_OF_MEMORY)


def memory_error(err: BaseException, inputs: torch.Tensor) -> torch.OutOfMemoryError:
    """An error that names the cause (memory on the inputs' device) and the remedy (a smaller batch)."""
    n = inputs.shape[0]
    return torch.OutOfMemoryError(
        f"LRP ran out of {inputs.device.type.upper()} memory on a batch of {n} samples of shape "
        f"{tuple(inputs.shape[1:])}; pass a smaller batch_size (e.g. batch_size={max(n // 2, 1)}) to "
        f"parameter_relevance: the relevance is a sum over samples, so batches give the same result. "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )
