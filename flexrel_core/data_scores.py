"""Data-aware baseline scores beside FlexRel: Wanda, first-order Taylor, and random (the floor).

FlexRel blends magnitude with LRP relevance computed on inference data. These scores use the same
inference samples in other well-known ways, so a comparison can tell whether LRP relevance helps or
any inference-time signal would (``notebooks/baselines.ipynb``):

- **Wanda** (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  ``W(w_jk) = |w_jk| · ‖X_k‖₂``, the weight's magnitude times the L2 norm of the input it multiplies,
  taken over every sample (and token) of the calibration set. For a Conv2d, ``X_(c,u,v)`` is the
  entry (c, u, v) of the unfolded (im2col) input, over every sample i *and* output position p:
  ``‖X_(c,u,v)‖₂² = Σ_i Σ_p x_i[c, p·s + (u, v)·d − pad]²`` (a tap in the zero padding adds 0), the
  conv-as-FC reading that relevance uses too. The squares are summed over samples before
  unfolding, so memory does not grow with samples × positions × patch (``input_norms``).
- **First-order Taylor** (Molchanov et al., 2019; SNIP's connection sensitivity, Lee et al., 2019):
  ``T(w) = |w · ∂L/∂w|``, the first-order estimate of the change of the loss when w is removed,
  with L the mean cross-entropy over the inference samples. Inference data comes without labels,
  so by default the cross-entropy is taken against the class the network *predicts* for each
  sample (as LRP starts from the predicted class); true labels can be passed as ``targets``.
- **Random**: seeded uniform scores in [0, 1), the floor any informed score must beat.

All three are float64 tensors shaped like the weights, higher = keep (``{"<module>.weight": t}``).
How they enter a pruning decision is ``scores.pruning_scores``'s business: a single score goes to
the threshold as it is (a global threshold over raw scores ranks them across layers; min-max
normalisation would not change that ranking), and a blend (``flexrel_taylor``) min-max normalises
each part over the whole model first, as FlexRel does. The comparison group is the whole model by
default, like every method here; Wanda's own grouping -- the weights of each output neuron (a row
of a Linear weight, an output channel of a Conv2d) -- is ``masks.prune(..., scope="output")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_padding, prunable_layers
from .lrp_inputs import check_inputs, check_targets

BASELINES = ("wanda", "taylor", "random")


def _unfolded_tap_sums(conv: nn.Conv2d, maps: torch.Tensor) -> torch.Tensor:
    """Σ_p maps[c, p·s + (u, v)·d − pad] for every weight position (j, c', u, v) of ``conv``:
    the sample-summed input map (C, H, W) unfolded as the conv-as-FC form reads it (taps in the zero
    padding add 0), summed over output positions, expanded over the output channels of each group."""
    kh, kw = conv.kernel_size
    c, j, g = conv.in_channels, conv.out_channels, conv.groups
    left, right, top, bottom = conv_padding(conv)
    padded = F.pad(maps[None], (left, right, top, bottom))
    taps = F.unfold(padded, kernel_size=(kh, kw), dilation=conv.dilation, stride=conv.stride)[0].sum(-1)
    taps = taps.view(g, 1, c // g, kh, kw).expand(g, j // g, c // g, kh, kw)
    return taps.reshape(j, c // g, kh, kw)


@torch.no_grad()
def input_norms(model: nn.Module, inputs: torch.Tensor, *, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """‖X‖₂ of the input each prunable weight multiplies, over every sample of ``inputs``, float64,
    shaped like the weight (``{"<module>.weight": t}``): for a Linear weight w_jk, the norm of input
    feature k over samples (and any leading dims); for a Conv2d weight w[j, c, u, v], the norm of the
    unfolded input entry (c, u, v) over samples and output positions (module docstring). One forward
    pass per batch of ``batch_size`` samples (the sums do not depend on the batching), in eval mode;
    a module called at several places sums the inputs of every call (every input its weight multiplies)."""
    inputs = check_inputs(model, inputs)
    layers = prunable_layers(model)
    sums: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, name: str) -> None:
        x = args[0].detach().double().pow(2)
        x = x.reshape(-1, x.shape[-1]).sum(0) if isinstance(module, nn.Linear) else x.sum(0)
        sums[name] = sums[name] + x if name in sums else x

    handles = [m.register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n, m in layers.items()]
    was_training = model.training
    try:
        model.eval()
        for chunk, _ in batches(inputs, None, batch_size):
            model(chunk)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    norms = {}
    for name, module in layers.items():
        if name not in sums:
            raise ValueError(f"layer {name!r} received no input in the forward pass: it is not called by the model")
        if isinstance(module, nn.Conv2d):
            norms[name] = _unfolded_tap_sums(module, sums[name]).sqrt()
        else:
            norms[name] = sums[name].sqrt().expand_as(module.weight).clone()
    return norms


def wanda(model: nn.Module, inputs: torch.Tensor, *, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Wanda's score ``|w_jk| · ‖X_k‖₂`` for every prunable weight (Sun et al., 2023), float64, the
    input norms over ``inputs`` (``input_norms``: conv inputs unfolded, over samples and positions)."""
    norms = input_norms(model, inputs, batch_size=batch_size)
    return {n: m.weight.detach().double().abs().mul_(norms[n]) for n, m in prunable_layers(model).items()}


def taylor(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor score ``|w · ∂L/∂w|`` for every prunable weight (Molchanov et al., 2019;
    Lee et al., 2019), float64, with L the mean cross-entropy over ``inputs`` against the class the
    model predicts for each sample (inference data has no labels) or, when given, ``targets`` (true
    labels). Gradients are taken in eval mode, ``batch_size`` samples at a time (the mean does not
    depend on the batching), without touching the parameters' ``.grad``; works inside ``torch.no_grad()``."""
    inputs = check_inputs(model, inputs)
    layers = prunable_layers(model)
    weights = [m.weight for m in layers.values()]
    flags = [w.requires_grad for w in weights]
    grads = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    was_training = model.training
    n = inputs.shape[0]
    if targets is not None and torch.as_tensor(targets).numel() != n:
        raise ValueError(f"targets must give one class per sample ({n}), got {torch.as_tensor(targets).numel()}")
    try:
        model.eval()
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            for chunk, target in batches(inputs, targets, batch_size):
                logits = model(chunk)
                if logits.ndim != 2:
                    raise ValueError(f"the model must return logits of shape (n, classes), got {tuple(logits.shape)}")
                t = check_targets(target, logits.shape[0], logits.shape[1])
                t = logits.detach().argmax(1) if t is None else t.to(logits.device)
                loss = F.cross_entropy(logits, t, reduction="sum")
                for total, g in zip(grads, torch.autograd.grad(loss, weights), strict=True):
                    total.add_(g.double())
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
        model.train(was_training)
    return {name: w.detach().double().mul(g / n).abs_() for (name, w), g in zip(_named(layers), grads, strict=True)}


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform scores in [0, 1), float64, drawn by a generator seeded with ``seed`` layer after layer
    in model order (the same seed gives the same scores on any device): random pruning, the floor."""
    generator = torch.Generator().manual_seed(int(seed))
    return {
        name: torch.rand(m.weight.shape, generator=generator, dtype=torch.float64).to(m.weight.device)
        for name, m in prunable_layers(model).items()
    }


def batches(inputs: torch.Tensor, targets: torch.Tensor | None, batch_size: int | None):
    """``(inputs, targets)`` in slices of ``batch_size`` samples (all at once for None)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    step = batch_size or inputs.shape[0]
    for start in range(0, inputs.shape[0], step):
        yield inputs[start : start + step], None if targets is None else torch.as_tensor(targets)[start : start + step]


def _named(layers: dict[str, nn.Module]) -> list[tuple[str, torch.Tensor]]:
    return [(name, m.weight) for name, m in layers.items()]
