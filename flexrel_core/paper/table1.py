"""Table 1: the cost of each technique -- time and memory to compute its scores, bytes of the pruned model.

``compute`` times magnitude, relevance and FlexRel scoring on the same inference batch (relevance
included where the method needs it), measures the peak tensor memory of one scoring call
(``workbook.measure.peak_tensor_bytes``) and the byte length of the model pruned to p in the
project's sparse encoding; ``plot`` and ``report`` show them.
"""

from __future__ import annotations

import copy
import functools
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from ..encoding import encode_sparse
from ..layers import prunable_layers
from ..masks import prune
from ..progress import progress
from ..relevance import engine_for, parameter_relevance
from ..scores import METHODS, pruning_scores
from ..training import select_device
from ..workbook.cache import cached
from ..workbook.config import dict_hash
from ..workbook.measure import peak_tensor_bytes, timings
from ..workbook.paths import cache_dir
from ..workbook.report import markdown_table
from .style import METHOD_ORDER, PALETTE


def compute(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    methods: Sequence[str] = METHODS,
    delta: float = 0.5,
    p: float = 0.9,
    normalize: str = "global",
    scope: str = "global",
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    batch_size: int | None = 256,
    repeats: int = 5,
    device: str = "cpu",
    key: str | None = None,
    cache_root: str | Path | None = None,
) -> pd.DataFrame:
    """Per method, the wall time (median, min and max of ``repeats`` after one warm-up) and peak tensor
    memory to compute its scores from ``model`` and the inference ``inputs`` (relevance included
    for relevance and FlexRel), and the size in bytes of the model pruned to ``p`` in the project's
    sparse encoding (``encoding.encode_sparse``). Cached under ``key`` when ``cache_root`` is given."""
    dev = select_device(device)
    model = model.to(dev).eval()
    inputs = inputs.to(dev)

    def compute() -> list[dict]:
        dense_bytes = len(encode_sparse(model.cpu()))
        model.to(dev)
        scorer = functools.partial(
            _scores,
            model,
            inputs,
            delta=delta,
            normalize=normalize,
            composite=composite,
            aggregate=aggregate,
            batch_size=batch_size,
        )
        return [
            _cost_row(model, method, scorer, p=p, scope=scope, repeats=repeats, device=dev)
            | {"dense_model_bytes": dense_bytes, "inference_samples": len(inputs)}
            | {"device": dev.type, "engine": "—" if method == "magnitude" else engine_for(model, composite)}
            for method in progress(methods, desc="score costs")
        ]

    if cache_root is None or key is None:
        return pd.DataFrame(compute())
    config = {
        "model": key,
        "samples": len(inputs),
        "methods": list(methods),
        "delta": delta,
        "p": p,
        "normalize": normalize,
        "scope": scope,
        "composite": composite,
        "aggregate": aggregate,
        "batch_size": batch_size,
        "repeats": repeats,
        "device": dev.type,
    }
    return pd.DataFrame(cached(cache_dir("costs", dict_hash(config), cache_root) / "costs.pt", compute, config=config))


def _scores(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    *,
    delta: float,
    normalize: str,
    composite: str,
    aggregate: str,
    batch_size: int | None,
) -> dict[str, torch.Tensor]:
    """One scoring call, relevance included for the methods that need it: what Table 1 times."""
    rel = None
    if method != "magnitude":
        rel = parameter_relevance(model, inputs, composite=composite, aggregate=aggregate, batch_size=batch_size)
    return pruning_scores(model, method=method, delta=delta, normalize=normalize, relevance=rel)


def _cost_row(
    model: nn.Module,
    method: str,
    scorer,
    *,
    p: float,
    scope: str,
    repeats: int,
    device: torch.device,
) -> dict:
    """Time (median, min, max of ``repeats``) and peak tensor memory of ``scorer(method)``, and the
    encoded size of the model pruned to ``p`` by its scores."""
    times = timings(lambda: scorer(method), device, repeats)
    memory = peak_tensor_bytes(lambda: scorer(method), device)
    pruned = copy.deepcopy(model).cpu()
    prune(pruned, {k: v.cpu() for k, v in scorer(method).items()}, p, scope=scope)
    return {
        "method": method,
        "score_time_s": statistics.median(times),
        "score_time_min_s": min(times),
        "score_time_max_s": max(times),
        "peak_memory_mib": memory / 2**20,
        "p": float(p),
        "nonzero_weights": sum(int((m.weight != 0).sum()) for m in prunable_layers(pruned).values()),
        "pruned_model_bytes": len(encode_sparse(pruned)),
    }


def report(costs: pd.DataFrame) -> str:
    """The Table 1 section of REPORT.md: time, memory and bytes per method."""
    t = costs.set_index("method")
    table = pd.DataFrame(
        {
            "method": t.index,
            "LRP engine": t["engine"].to_numpy() if "engine" in t else "—",
            "score time (ms)": 1000 * t["score_time_min_s"].to_numpy(),
            "peak memory (MiB)": t["peak_memory_mib"].to_numpy(),
            "non-zero weights": t["nonzero_weights"].to_numpy(),
            "pruned model (bytes)": t["pruned_model_bytes"].to_numpy(),
        }
    )
    lines = [
        "## Table 1 — cost of each technique",
        "",
        f"Scoring on {int(t['inference_samples'].iloc[0])} inference samples ({t['device'].iloc[0]}); time is "
        "the best of repeated runs after a warm-up (as `timeit` advises: least disturbed by other load; the "
        "median is in the CSV), memory the peak of tensor allocations; the pruned "
        f"model (p = {t['p'].iloc[0]:g}) is measured as the byte length of the project's sparse encoding "
        f"(dense model: {int(t['dense_model_bytes'].iloc[0])} bytes). Relevance comes from the fast engine "
        "(zennit's rules computed directly) where it handles the model (chains and residual networks of the "
        "layers it knows), else from zennit.",
        "",
        markdown_table(table, ".4g"),
    ]
    if {"magnitude", "flexrel"} <= set(t.index) and t.loc["magnitude", "score_time_min_s"] > 0:
        ratio = t.loc["flexrel", "score_time_min_s"] / t.loc["magnitude", "score_time_min_s"]
        lines += ["", f"FlexRel scoring takes {ratio:.3g}× the time of magnitude scoring (it adds one LRP pass)."]
    return "\n".join(lines)


def plot(costs: pd.DataFrame) -> Figure:
    """Bars: time and peak memory to compute each score, and bytes of the pruned model."""
    panels = [
        ("score_time_min_s", 1000, "score time, best of runs (ms, log)"),
        ("peak_memory_mib", 1, "peak memory (MiB)"),
        ("pruned_model_bytes", 1 / 1024, "pruned model (KiB)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    methods = [m for m in METHOD_ORDER if m in set(costs["method"])]
    t = costs.set_index("method").loc[methods]
    for ax, (column, scale, label) in zip(axes, panels, strict=True):
        values = t[column] * scale
        ax.bar(methods, values, color=[PALETTE[m] for m in methods])
        for k, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (k, v), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel(label)
        if column.startswith("score_time"):
            ax.set_yscale("log")
    dense = costs["dense_model_bytes"].iloc[0] / 1024
    axes[2].axhline(dense, color="k", ls="--", lw=1, label=f"dense ({dense:.3g} KiB)")
    axes[2].legend(loc="upper right")
    fig.suptitle(f"Cost of each technique (p = {costs['p'].iloc[0]:g}, {costs['device'].iloc[0]})")
    fig.tight_layout()
    return fig
