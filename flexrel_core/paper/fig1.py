"""Figure 1: which weights magnitude, relevance and FlexRel keep on one trained layer at one p.

``compute`` prunes copies of the trained model with each method and returns, for one layer, every
weight's M_norm, R_norm, FlexRel score and kept flags, the Jaccard overlaps of the kept sets and
the kept fractions; ``plot`` draws the three masks and the M_norm-R_norm plane coloured by
FlexRel's decision; ``report`` writes the section of REPORT.md.
"""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import nn

from ..layers import prunable_layers
from ..masks import prune
from ..scores import METHODS, magnitude, method_delta, normalize_scores, pruning_scores
from ..workbook.report import markdown_table
from .style import LABELS, METHOD_ORDER, PALETTE, share


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∧ b| / |a ∨ b| of two boolean masks (1 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def _values(t: torch.Tensor) -> np.ndarray:
    """Flat values for a CSV: booleans as they are, scores rounded to 6 decimals (keeps files small)."""
    flat = t.numpy().ravel()
    return flat if flat.dtype == bool else flat.round(6)


def compute(
    model: nn.Module,
    relevance: dict[str, torch.Tensor],
    *,
    layer: str,
    p: float,
    delta: float = 0.5,
    normalize: str = "global",
    scope: str = "global",
    max_rows: int | None = None,
    max_cols: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The masks magnitude, relevance and FlexRel give at factor ``p``, seen on ``layer``.

    The model is pruned as a whole (``scope``), each method on its own copy. Returns
    ``{"weights": one row per weight of the layer (viewed as out x in·kh·kw, cropped to
    max_rows x max_cols) with row, col, m_norm, r_norm, score, kept_<method>;
    "overlap": Jaccard of the kept sets for each pair, in the layer and in the whole model;
    "kept": fraction kept by each method in the layer and in the model}``.
    """
    layers = prunable_layers(model)
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r}; prunable weights are {list(layers)}")
    masks = {}
    for method in METHODS:
        copy_ = copy.deepcopy(model)
        scores = pruning_scores(copy_, method=method, delta=delta, normalize=normalize, relevance=relevance)
        masks[method] = prune(copy_, scores, p, scope=scope)
    weights = _layer_views(
        model, relevance, masks, layer=layer, delta=delta, normalize=normalize, max_rows=max_rows, max_cols=max_cols
    )
    overlap, kept = _agreement(masks, layer=layer, p=p, delta=delta)
    return {"weights": weights, "overlap": overlap, "kept": kept}


def _layer_views(
    model: nn.Module,
    relevance: dict[str, torch.Tensor],
    masks: dict[str, dict[str, torch.Tensor]],
    *,
    layer: str,
    delta: float,
    normalize: str,
    max_rows: int | None,
    max_cols: int | None,
) -> pd.DataFrame:
    """One row per weight of ``layer`` (out x in·kh·kw, cropped): M_norm, R_norm, the FlexRel score
    and whether each method keeps it."""
    m_norm = normalize_scores(magnitude(model), normalize)[layer]
    r_norm = normalize_scores(relevance, normalize)[layer].to(m_norm.device)
    views = {
        "m_norm": m_norm,
        "r_norm": r_norm,
        "score": (1 - delta) * m_norm + delta * r_norm,
        **{f"kept_{m}": masks[m][layer] for m in METHODS},
    }
    positions = int(np.prod(m_norm.shape[2:]))  # kernel positions per input channel (1: a Linear layer)
    views = {k: v.detach().cpu().reshape(v.shape[0], -1)[:max_rows, :max_cols] for k, v in views.items()}
    rows, cols = np.indices(views["m_norm"].shape)
    return pd.DataFrame(
        {"layer": layer, "positions": positions, "row": rows.ravel(), "col": cols.ravel(),
         **{k: _values(v) for k, v in views.items()}}
    )  # fmt: skip


def _agreement(
    masks: dict[str, dict[str, torch.Tensor]], *, layer: str, p: float, delta: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Jaccard overlap of the kept sets for each pair of methods, and the fraction each keeps, in
    ``layer`` and in the whole model."""
    flat = {m: torch.cat([t.flatten() for t in masks[m].values()]) for m in METHODS}
    pairs = [("magnitude", "relevance"), ("magnitude", "flexrel"), ("relevance", "flexrel")]
    overlap = pd.DataFrame(
        [
            {
                "method_a": a,
                "method_b": b,
                "jaccard_layer": jaccard(masks[a][layer], masks[b][layer]),
                "jaccard_model": jaccard(flat[a], flat[b]),
            }
            for a, b in pairs
        ]
    )
    kept = pd.DataFrame(
        [
            {
                "method": m,
                "layer": layer,
                "p": float(p),
                "delta": method_delta(m, delta),
                "kept_layer": float(masks[m][layer].float().mean()),
                "kept_model": float(flat[m].float().mean()),
            }
            for m in METHODS
        ]
    )
    return overlap, kept


def plot(weights: pd.DataFrame, overlap: pd.DataFrame, kept: pd.DataFrame | None = None) -> Figure:
    """The kept/pruned mask of one layer under each method, and M_norm against R_norm coloured by
    FlexRel's decision (``compute``'s ``weights``, ``overlap`` and ``kept``, read back from their CSVs).
    Each mask's title gives the share of the whole layer that method keeps (from ``kept``; without it,
    the share of the weights shown)."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.1]})
    jac = {(r.method_a, r.method_b): r.jaccard_layer for r in overlap.itertuples()}
    layer_kept = kept.set_index("method")["kept_layer"] if kept is not None else None
    cmap = ListedColormap(["#d9d9d9", "#08306b"])
    positions = int(weights["positions"].iloc[0]) if "positions" in weights else 1
    for ax, method in zip(axes[:3], METHOD_ORDER, strict=True):
        grid = weights.pivot(index="row", columns="col", values=f"kept_{method}").astype(float)
        ax.imshow(grid.to_numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        if layer_kept is not None:
            ax.set_title(f"{LABELS[method]}: keeps {share(layer_kept[method])} of the layer")
        else:
            ax.set_title(f"{LABELS[method]}: keeps {share(grid.to_numpy().mean())} of the weights shown")
        ax.set_xlabel("input unit" if positions == 1 else f"input channel × kernel position ({positions} per channel)")
        ax.set_ylabel("output unit")
    pairs = "; ".join(f"{LABELS[a]} vs {LABELS[b]} {j:.2f}" for (a, b), j in jac.items())
    kept = weights["kept_flexrel"].astype(bool)
    ax = axes[3]
    ax.scatter(
        weights.loc[~kept, "m_norm"], weights.loc[~kept, "r_norm"], s=4, c="#bdbdbd", label="pruned", rasterized=True
    )
    ax.scatter(
        weights.loc[kept, "m_norm"],
        weights.loc[kept, "r_norm"],
        s=4,
        c=PALETTE["flexrel"],
        label="kept by FlexRel",
        rasterized=True,
    )
    ax.set_xlabel("M_norm (magnitude)")
    ax.set_ylabel("R_norm (relevance)")
    ax.set_title("FlexRel's decision")
    ax.legend(loc="best", markerscale=3, frameon=True)
    layer = weights["layer"].iloc[0]
    fig.suptitle(f"Layer {layer}: kept (dark) and pruned (light) weights\nJaccard overlap of the kept sets: {pairs}")
    fig.tight_layout()
    return fig


def report(result: dict[str, pd.DataFrame]) -> str:
    """The Figure 1 section of REPORT.md: kept fractions and mask overlaps."""
    kept, overlap, w = result["kept"], result["overlap"], result["weights"]
    layer, p = kept["layer"].iloc[0], kept["p"].iloc[0]
    corr = float(w[["m_norm", "r_norm"]].corr(method="spearman").iloc[0, 1])
    return "\n".join(
        [
            "## Figure 1 — what magnitude, relevance and FlexRel keep",
            "",
            f"Layer `{layer}` of the trained model, whole model pruned to p = {p:g} "
            f"(FlexRel δ = {kept.set_index('method').loc['flexrel', 'delta']:g}).",
            "",
            markdown_table(kept[["method", "kept_layer", "kept_model"]], ".3f"),
            "",
            markdown_table(overlap, ".3f"),
            "",
            f"Spearman correlation of M_norm and R_norm over the weights shown: {corr:.2f} "
            "(low values mean relevance ranks weights differently from magnitude).",
        ]
    )
