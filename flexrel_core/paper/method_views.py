"""The method notebook's views of the trained model: what the additive structure of parameter
relevance does to a layer's mask, input heatmaps of a few test digits, and how the inference data
changes which weights are relevant.

rel(w_kj) = Σ_i [rel(a_ik) + rel(b_ij)] = A_k + B_j is a term of the input k plus a term of the
output j, so within a layer relevance ranks weights by whole rows and columns: relevance-only
pruning (δ = 1) at a high factor keeps the weights of a few units and disconnects the others.
``layer_masks`` and ``mask_structure`` measure it; ``plot_masks`` shows it, once as the layer is
stored and once with rows and columns sorted by their relevance term, where δ = 1 is a staircase.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import nn

from ..data import DataSplits, tensors
from ..layers import prunable_layers
from ..masks import get_masks, prune
from ..relevance import lrp_backward
from ..scores import pruning_scores
from ..workbook.config import PruneConfig
from ..workbook.pipeline import Setup
from ..workbook.points import pruned_model
from .fig1 import jaccard
from .style import share

MASK_COLOURS = ListedColormap(["#d9d9d9", "#08306b"])  # pruned light, kept dark (as Figure 1)


def layer_masks(setup: Setup, pcfg: PruneConfig, layer: str, p: float, deltas: list[float]) -> dict[float, np.ndarray]:
    """``layer``'s kept mask (out × in·kh·kw) when the whole model is pruned one-shot to ``p`` at each δ."""
    masks = {}
    for delta in deltas:
        mask = get_masks(pruned_model(setup, delta, p, pcfg))[layer]
        masks[delta] = mask.reshape(mask.shape[0], -1).numpy().astype(bool)
    return masks


def mask_structure(masks: dict[float, np.ndarray], relevance: torch.Tensor) -> pd.DataFrame:
    """For each δ: the share of the layer's weights kept, of its output units (rows) and of its
    inputs (columns) that keep at least one weight, and how much of the kept set lies in the
    top-ranked rows and columns of the relevance terms (1.0: a staircase of whole rows and columns)."""
    r = relevance.detach().double().reshape(relevance.shape[0], -1).numpy()
    row_rank, col_rank = np.argsort(np.argsort(-r.mean(1))), np.argsort(np.argsort(-r.mean(0)))
    rows = []
    for delta, mask in masks.items():
        kept_rows, kept_cols = mask.any(1), mask.any(0)
        staircase = _staircase(mask, row_rank, col_rank)
        rows.append({"delta": delta, "kept": mask.mean(), "rows with a kept weight": kept_rows.mean(),
                     "columns with a kept weight": kept_cols.mean(), "staircase agreement": staircase})  # fmt: skip
    return pd.DataFrame(rows)


def _staircase(mask: np.ndarray, row_rank: np.ndarray, col_rank: np.ndarray) -> float:
    """Share of kept weights (j, k) whose every better-ranked (j', k') with j' ≤ j and k' ≤ k is kept
    too, after sorting rows and columns by relevance: what an additive score kept above a threshold gives."""
    if not mask.any():
        return 1.0
    sorted_mask = np.zeros_like(mask)
    sorted_mask[np.ix_(row_rank, col_rank)] = mask
    # A kept weight is "monotone" when everything above and to its left is kept (2-D cumulative AND).
    monotone = np.logical_and.accumulate(np.logical_and.accumulate(sorted_mask, axis=0), axis=1)
    return float(monotone.sum() / sorted_mask.sum())


def plot_masks(masks: dict[float, np.ndarray], relevance: torch.Tensor, layer: str, p: float, crop=(64, 128)) -> Figure:
    """Top: a ``crop`` corner of ``layer``'s mask at each δ, as stored. Bottom: the whole layer with its
    rows and columns sorted by their relevance term (largest first): an additive score cut at one
    threshold is a staircase there."""
    r = relevance.detach().double().reshape(relevance.shape[0], -1).numpy()
    order_rows, order_cols = np.argsort(-r.mean(1)), np.argsort(-r.mean(0))
    fig, axes = plt.subplots(2, len(masks), figsize=(4.6 * len(masks), 7.2), squeeze=False)
    for col, (delta, mask) in enumerate(masks.items()):
        top, bottom = axes[0, col], axes[1, col]
        shown = mask[: crop[0], : crop[1]]
        top.imshow(shown, cmap=MASK_COLOURS, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        top.set_title(f"δ = {delta:g}: keeps {share(mask.mean())} of the layer")
        top.set_xlabel("input (first columns)")
        top.set_ylabel("output unit (first rows)")
        sorted_mask = mask[np.ix_(order_rows, order_cols)]
        bottom.imshow(sorted_mask, cmap=MASK_COLOURS, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        bottom.set_title(f"δ = {delta:g}, rows and columns sorted by relevance")
        bottom.set_xlabel("input, by decreasing input term A_k")
        bottom.set_ylabel("output unit, by decreasing B_j")
    fig.suptitle(f"Layer {layer}, whole model pruned to p = {p:g}: kept weights dark, pruned light")
    fig.tight_layout()
    return fig


def first_of_each_class(data: DataSplits, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first test image of each of ``classes`` (a fixed, readable choice of digits to explain)."""
    x, y = tensors(data.test)
    picks = [int(torch.nonzero(y == c)[0]) for c in classes if bool((y == c).any())]
    return x[picks], y[picks]


def input_heatmaps(model: nn.Module, x: torch.Tensor, composite: str = "epsilon_plus_flat") -> dict[str, np.ndarray]:
    """LRP relevance of each input pixel (summed over channels), started from the predicted class."""
    model = model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    rel = lrp_backward(model, x, composite=composite).detach().sum(1)
    return {"relevance": rel.numpy(), "predicted": predicted.numpy()}


def plot_heatmaps(x: torch.Tensor, labels: torch.Tensor, heat: dict[str, np.ndarray]) -> Figure:
    """Each digit above its heatmap (red: relevance for the predicted class, blue: against)."""
    n = len(x)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(x[i].sum(0).numpy(), cmap="gray_r")
        axes[0, i].set_title(f"label {int(labels[i])}, predicted {int(heat['predicted'][i])}", fontsize=9)
        r = heat["relevance"][i]
        lim = float(np.abs(r).max()) or 1.0
        axes[1, i].imshow(r, cmap="bwr", vmin=-lim, vmax=lim)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("LRP relevance")
    fig.suptitle("Which pixels the prediction rests on (red: for the predicted class, blue: against)")
    fig.tight_layout()
    return fig


def output_terms(model: nn.Module, relevance: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame:
    """The output term B_j of the last layer (its mean relevance per output unit, one unit per class),
    as a share of the layer's total, under each inference dataset of ``relevance`` ({name: rel})."""
    last = list(prunable_layers(model))[-1]
    table = {}
    for name, rel in relevance.items():
        rows = rel[last].detach().double().reshape(rel[last].shape[0], -1).mean(1)
        table[name] = (rows / rows.sum()).numpy()
    return pd.DataFrame({"class": range(len(next(iter(table.values())))), **table})


def kept_overlap(
    model_factory, relevance: dict[str, dict[str, torch.Tensor]], p: float, deltas: list[float]
) -> pd.DataFrame:
    """Jaccard overlap, over the whole model, of the weights kept at ``p`` when relevance comes from
    each of the two inference datasets of ``relevance``, at each δ (1.0 at δ = 0: magnitude ignores it)."""
    (name_a, rel_a), (name_b, rel_b) = relevance.items()
    rows = []
    for delta in deltas:
        kept = []
        for rel in (rel_a, rel_b):
            model = model_factory()
            masks = prune(model, pruning_scores(model, delta=delta, relevance=rel), p)
            kept.append(torch.cat([m.flatten() for m in masks.values()]))
        rows.append({"delta": delta, f"Jaccard({name_a}, {name_b})": jaccard(*kept)})
    return pd.DataFrame(rows)


def plot_output_terms(terms: pd.DataFrame, shift_classes: list[int]) -> Figure:
    """Bars of each output unit's share of the last layer's relevance (its row mean, B_j + mean A_k)
    under each inference dataset."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = [c for c in terms.columns if c != "class"]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(terms["class"] + (i - (len(names) - 1) / 2) * width, terms[name], width, label=name)
    ax.set_xticks(terms["class"])
    ax.set_xlabel("output unit (class)")
    ax.set_ylabel("share of the layer's relevance")
    ax.set_title(f"Relevance of the weights into each output unit (B_j + mean A_k): all classes vs {shift_classes}")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


# What each of zennit's rules does, in a sentence (Montavon et al. 2019, "Layer-wise relevance propagation:
# an overview").
RULES = {
    "Flat": "spreads each output's relevance evenly over the inputs it sees, whatever their values",
    "ZPlus": "hands relevance back in proportion to the positive contributions a_k·w⁺_jk only",
    "Epsilon": "hands relevance back in proportion to the contributions a_k·w_jk, ε stabilising small sums",
    "Pass": "passes relevance through unchanged",
}


def composite_rules(model: nn.Module, composite: str = "epsilon_plus_flat") -> pd.DataFrame:
    """The LRP rule zennit's ``composite`` gives each prunable layer of ``model`` (as its context
    would register them: the first layer gets the composite's first-layer rule), with what it does."""
    from zennit.composites import COMPOSITES

    chosen = COMPOSITES[composite]()
    layers, ctx, rows = prunable_layers(model), {}, []
    names = {module: name for name, module in layers.items()}
    for name, module in model.named_modules():
        rule = chosen.module_map(ctx, name, module)
        if module in names:
            rule_name = type(rule).__name__ if rule is not None else "none (plain gradient)"
            rows.append({"layer": names[module], "type": type(module).__name__, "rule": rule_name,
                         "what it does": RULES.get(rule_name, "")})  # fmt: skip
    return pd.DataFrame(rows)
