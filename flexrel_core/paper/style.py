"""One look for every figure and the explorer: the methods' order, colours and labels, and the
stretched pruning-factor axis."""

from __future__ import annotations

import numpy as np

from ..scores import METHODS

METHOD_ORDER = list(METHODS)
PALETTE = {"magnitude": "#1f77b4", "relevance": "#ff7f0e", "flexrel": "#2ca02c", "dense": "0.6"}
PALETTE |= {"wanda": "#9467bd", "taylor": "#8c564b", "random": "#7f7f7f", "flexrel_taylor": "#17becf"}
LABELS = {"magnitude": "magnitude", "relevance": "relevance only", "flexrel": "FlexRel", "dense": "dense (no pruning)"}
LABELS |= {"wanda": "Wanda", "taylor": "Taylor", "random": "random", "flexrel_taylor": "FlexRel with Taylor"}
P_TICKS = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]


def _stretch(p):
    """-log10(1 - p): spreads the high pruning factors (0.9 -> 1, 0.99 -> 2)."""
    return -np.log10(np.clip(1 - np.asarray(p, dtype=float), 1e-6, None))


def _unstretch(s):
    return 1 - 10 ** (-np.asarray(s, dtype=float))


def p_axis(ax, ps) -> None:
    """Pruning-factor x axis stretched near 1, ticks at the usual factors where the grid has a point
    (every point of the grid when it holds fewer than two of them): no tick where nothing was measured."""
    ax.set_xscale("function", functions=(_stretch, _unstretch))
    grid = sorted({round(float(p), 9) for p in ps})
    ticks = [t for t in P_TICKS if any(abs(t - p) < 1e-9 for p in grid)]
    ticks = ticks if len(ticks) >= 2 else grid
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlim(grid[0], grid[-1])
    ax.set_xlabel("pruning factor p (axis stretched near 1)")


def share(x: float) -> str:
    """A fraction as a percentage that never shows a non-zero share as 0 % or a partial one as 100 %:
    one decimal below 10 % and above 90 % (``0.001`` -> ``0.1 %``), whole percents between."""
    return f"{100 * x:.1f} %" if x < 0.1 or x > 0.9 else f"{100 * x:.0f} %"
