"""Table 1: the cost of each technique -- time and memory to compute its scores, bytes of the pruned model.

``compute`` times magnitude, relevance and FlexRel scoring on the same inference batch (relevance
included where the method needs it) in interleaved rounds (``workbook.measure.interleaved_timings``: one
call of each method per round, the order rotated), reports the median and the spread of the rounds,
measures the peak tensor memory of one scoring call (``workbook.measure.peak_tensor_bytes``) and the
byte length of the model pruned to p in the project's sparse encoding; ``plot`` and ``report`` show them.

Relevance-only and FlexRel scoring do the same LRP pass; FlexRel adds the magnitudes' normalisation and
the blend, a few element-wise operations over the weights, far below the pass's cost. Their times are
therefore expected to differ by little, in either direction under the machine's noise; the report gives
FlexRel − relevance paired per round, so that a reader sees that difference with its spread.
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
from torch.utils.data import Dataset

from ..encoding import encode_sparse
from ..layers import prunable_layers
from ..masks import prune
from ..progress import progress
from ..relevance import engine_for, parameter_relevance
from ..scores import METHODS, pruning_scores
from ..training import select_device, train
from ..workbook.cache import cached
from ..workbook.config import dict_hash
from ..workbook.measure import interleaved_timings, peak_tensor_bytes
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
    train_data: Dataset | None = None,
    lr: float = 1e-3,
    train_batch_size: int = 64,
    device: str = "cpu",
    key: str | None = None,
    cache_root: str | Path | None = None,
) -> pd.DataFrame:
    """Per method, the wall time (median, min and max of ``repeats`` interleaved rounds after one warm-up
    each; ``round_times_s``: every round's time, for paired differences) and peak tensor memory to compute
    its scores from ``model`` and the inference ``inputs`` (relevance included for relevance and FlexRel),
    and the size in bytes of the model pruned to ``p`` in the project's sparse encoding
    (``encoding.encode_sparse``). With ``train_data``, one float32 training epoch of a copy of the model on
    it (what a fine-tuning epoch costs, the yardstick of "modest overhead") is timed in the same rounds, in
    the ``epoch_*`` columns of every row. Cached under ``key`` when ``cache_root`` is given."""
    dev = select_device(device)
    model = model.to(dev).eval()
    inputs = inputs.to(dev)

    def one_epoch() -> None:
        train(copy.deepcopy(model), train_data, epochs=1, lr=lr, batch_size=train_batch_size, device=dev,
              show_progress=False)  # fmt: skip

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
        calls = {m: functools.partial(scorer, m) for m in methods}
        times = interleaved_timings(calls | ({EPOCH: one_epoch} if train_data is not None else {}), dev, repeats)
        epoch = {} if train_data is None else _time_columns("epoch_", times[EPOCH]) | {"train_samples": len(train_data)}
        return [
            _cost_row(model, method, scorer, times[method], p=p, scope=scope, device=dev)
            | {"dense_model_bytes": dense_bytes, "inference_samples": len(inputs)}
            | {"device": dev.type, "engine": "—" if method == "magnitude" else engine_for(model, composite)}
            | epoch
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
    if train_data is not None:
        config |= {"train_samples": len(train_data), "lr": lr, "train_batch_size": train_batch_size}
    return pd.DataFrame(cached(cache_dir("costs", dict_hash(config), cache_root) / "costs.pt", compute, config=config))


# The name of the training epoch among the timed calls.
EPOCH = "one training epoch"


def _time_columns(prefix: str, times: list[float]) -> dict:
    """Median, min, max and every round's time of ``times``, as columns named ``<prefix>time_s`` etc."""
    return {
        f"{prefix}time_s": statistics.median(times),
        f"{prefix}time_min_s": min(times),
        f"{prefix}time_max_s": max(times),
        f"{prefix}round_times_s": " ".join(f"{t:.6f}" for t in times),
    }


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
    times: list[float],
    *,
    p: float,
    scope: str,
    device: torch.device,
) -> dict:
    """Time (median, min, max of the rounds' ``times``) and peak tensor memory of ``scorer(method)``, and
    the encoded size of the model pruned to ``p`` by its scores."""
    memory = peak_tensor_bytes(lambda: scorer(method), device)
    pruned = copy.deepcopy(model).cpu()
    prune(pruned, {k: v.cpu() for k, v in scorer(method).items()}, p, scope=scope)
    return {
        "method": method,
        **_time_columns("score_", times),
        "peak_memory_mib": memory / 2**20,
        "p": float(p),
        "nonzero_weights": sum(int((m.weight != 0).sum()) for m in prunable_layers(pruned).values()),
        "pruned_model_bytes": len(encode_sparse(pruned)),
    }


def round_times(costs: pd.DataFrame, column: str = "score_round_times_s") -> pd.DataFrame:
    """Every round's time per method (rows: rounds, columns: methods) from the CSV's ``column``."""
    t = costs.set_index("method")[column]
    return pd.DataFrame({m: [float(v) for v in str(t[m]).split()] for m in t.index})


def overhead(costs: pd.DataFrame) -> dict | None:
    """FlexRel scoring time over one training epoch's, per round: median, min and max, and the verdict
    on "modest overhead": ``modest`` when the median ratio is below 1 (scoring costs less than one epoch
    of the training a user pays anyway), robust when every round's ratio is. None without an epoch timed."""
    if "epoch_round_times_s" not in costs or "flexrel" not in set(costs["method"]):
        return None
    epoch = [float(v) for v in str(costs["epoch_round_times_s"].iloc[0]).split()]
    ratio = round_times(costs)["flexrel"] / epoch
    median = float(ratio.median())
    return {
        "ratio": median, "low": float(ratio.min()), "high": float(ratio.max()), "n": len(ratio),
        "verdict": "modest" if median < 1 else "not modest",
        "robust": "robust" if (ratio < 1).all() or (ratio >= 1).all() else "marginal",
        "train_samples": int(costs["train_samples"].iloc[0]), "epoch_s": float(costs["epoch_time_s"].iloc[0]),
    }  # fmt: skip


def report(costs: pd.DataFrame) -> str:
    """The Table 1 section of REPORT.md: time (median and range of the interleaved rounds), memory and
    bytes per method; FlexRel − relevance paired per round; FlexRel's scoring against one training epoch."""
    t = costs.set_index("method")
    ms = 1000 * t[["score_time_s", "score_time_min_s", "score_time_max_s"]]
    table = pd.DataFrame(
        {
            "method": t.index,
            "LRP engine": t["engine"].to_numpy() if "engine" in t else "—",
            "score time, median (ms)": ms["score_time_s"].to_numpy(),
            "range (ms)": [
                f"{lo:.4g}–{hi:.4g}" for lo, hi in zip(ms["score_time_min_s"], ms["score_time_max_s"], strict=True)
            ],
            "peak memory (MiB)": t["peak_memory_mib"].to_numpy(),
            "non-zero weights": t["nonzero_weights"].to_numpy(),
            "pruned model (bytes)": t["pruned_model_bytes"].to_numpy(),
        }
    )
    rounds = round_times(costs)
    lines = [
        "## Table 1 — cost of each technique",
        "",
        f"Scoring on the same {int(t['inference_samples'].iloc[0])} inference samples ({t['device'].iloc[0]}), "
        f"timed in {len(rounds)} interleaved rounds after a warm-up (one call of each method per round, the order "
        "rotated, so that a drift of the machine's speed falls on every method alike): the median and the range "
        "of the rounds; memory is the peak of tensor allocations; the pruned "
        f"model (p = {t['p'].iloc[0]:g}) is measured as the byte length of the project's sparse encoding "
        f"(dense model: {int(t['dense_model_bytes'].iloc[0])} bytes). Relevance comes from the fast engine "
        "(zennit's rules computed directly) where it handles the model (chains and residual networks of the "
        "layers it knows), else from zennit.",
        "",
        markdown_table(table, ".4g"),
    ]
    if {"magnitude", "flexrel"} <= set(t.index) and t.loc["magnitude", "score_time_s"] > 0:
        ratio = t.loc["flexrel", "score_time_s"] / t.loc["magnitude", "score_time_s"]
        lines += [
            "",
            f"FlexRel scoring takes {ratio:.3g}× the time of magnitude scoring (median; it adds one LRP pass).",
        ]
    if {"relevance", "flexrel"} <= set(rounds):
        d = 1000 * (rounds["flexrel"] - rounds["relevance"])
        lines += [
            "",
            f"FlexRel − relevance-only, paired per round: median {d.median():+.2f} ms (range {d.min():+.2f} to "
            f"{d.max():+.2f} ms). Both run the same LRP pass; FlexRel adds the magnitudes' normalisation and the "
            "blend, a few element-wise operations over the weights, so the two differ by little and the order of "
            "their medians can go either way under the machine's noise.",
        ]
    if (o := overhead(costs)) is not None:
        lines += [
            "",
            f"**Modest overhead** (the paper's claim): FlexRel scoring takes {o['ratio']:.3g}× the time of one "
            f"float32 training epoch of the same model on its {o['train_samples']:,} training images "
            f"({1000 * o['epoch_s']:.4g} ms, timed in the same rounds; range of the ratio over the rounds "
            f"{o['low']:.3g}–{o['high']:.3g}): {o['verdict']}"
            + ("" if o["robust"] == "robust" else " *(marginal)*")
            + " against what a user pays anyway for one epoch of fine-tuning.",
        ]
    return "\n".join(lines)


def plot(costs: pd.DataFrame) -> Figure:
    """Bars: time and peak memory to compute each score, and bytes of the pruned model."""
    panels = [
        ("score_time_s", 1000, "score time, median of rounds (ms, log)"),
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
