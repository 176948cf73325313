"""What data a result was computed on, stated beside it: every report section names, for each of
its conditions, the relevance sample (size and images per class, over the seeds) and the size of
the test split its accuracies come from.

The table is derived by the same functions the pipeline uses (``pipeline.data_for``,
``pipeline.relevance_sample``), without a model: the splits and draws are seeded, so it describes
exactly the samples the cached relevance was computed on (a test checks it against ``prepare``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pandas as pd

from ..data import class_counts
from .config import PruneConfig, TrainConfig
from .pipeline import data_for, relevance_sample


def describe(
    cfg: TrainConfig,
    pcfg: PruneConfig,
    seeds: Sequence[int],
    shift: Mapping | None = None,
    *,
    names: tuple[str, str] = ("in-distribution", "shifted"),
    test_samples: int | None = None,
) -> pd.DataFrame:
    """One row per (condition, seed): ``relevance_samples`` drawn of ``inference_split`` images,
    ``test_samples`` evaluated (``test_samples=`` when a stage evaluates a stratified subset of the
    test split), and ``class_<c>``: images of class c in the relevance sample. The conditions are
    the training distribution and, when ``shift`` (``load_dataset``'s ``shift_classes`` /
    ``shift_weights``) is non-empty, the shifted one, called ``names``."""
    conditions = {names[0]: {}, **({names[1]: dict(shift)} if shift else {})}
    rows = []
    for name, shift in conditions.items():
        for seed in seeds:
            c = dataclasses.replace(cfg, seed=int(seed))
            data = data_for(c, **shift)
            sample = relevance_sample(data, pcfg.inference_samples, c.seed)
            counts = class_counts(sample, data.num_classes)
            rows.append(
                {
                    "condition": name,
                    "seed": int(seed),
                    "relevance_samples": len(sample),
                    "inference_split": len(data.inference),
                    "test_samples": min(test_samples or len(data.test), len(data.test)),
                    **{f"class_{k}": n for k, n in enumerate(counts)},
                }
            )
    return pd.DataFrame(rows)


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def sentence(table: pd.DataFrame) -> str:
    """The report's paragraph on the samples of ``describe``'s table (ranges over the seeds)."""
    parts = []
    for name, g in table.groupby("condition", sort=False):
        classes = [c for c in g.columns if c.startswith("class_") and g[c].max() > 0]
        per_class = ", ".join(f"{c.removeprefix('class_')}: {_span(g[c])}" for c in classes)
        parts.append(
            f"*{name}*: relevance on {_span(g['relevance_samples'])} of the {_span(g['inference_split'])} "
            f"inference images of each seed, drawn at random stratified by class (images per class "
            f"{per_class}); accuracy on {_span(g['test_samples'])} test images"
        )
    seeds = table["seed"].nunique()
    return f"**Samples** ({seeds} seed{'s' if seeds > 1 else ''}): " + "; ".join(parts) + "."
