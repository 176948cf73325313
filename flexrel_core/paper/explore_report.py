"""The explorer's report: its section of REPORT.md, the samples it saw, and the update-time budget.

``report`` turns ``explore.render_static``'s table (and ``explore.timing``'s times) into markdown;
``sample_table`` describes the relevance samples and test images of the explorer's two inference
choices; ``within_budget`` says whether a slider move shows its setting within ``BUDGET_S``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..workbook.config import PruneConfig, TrainConfig
from ..workbook.paths import results_dir
from ..workbook.samples import describe
from .explore_session import resolve

BUDGET_S = 0.5  # seconds from a slider's release to its setting's numbers, mask and sparsity on screen


def within_budget(times: Mapping) -> bool:
    """Whether a δ move and a p move each show their new setting within ``BUDGET_S`` (median)."""
    return max(times["delta_feedback_median_s"], times["p_feedback_median_s"]) <= BUDGET_S


def report(table: pd.DataFrame, times: Mapping | None = None) -> str:
    """Markdown for the report's "explore" section from ``render_static``'s table (and ``timing``)."""
    lines = [
        "## Explorer (interactive δ and pruning factor)",
        "",
        "Open `notebooks/explore.ipynb` with `make lab` to move δ and p live. Static views at a few",
        "settings (figures `explore_*.png`; numbers in `explore_points.csv`). Pruning here is one-shot (no",
        "fine-tuning), so accuracy at high p is far below what the fine-tuned runs of Figures 2 and 4 reach.",
        'Accuracy is measured on the test split of each inference choice ("shifted": only the classes',
        "`shift_classes`), whose relevance scores the weights.",
        "",
        "| inference data | δ | p | dense acc. | pruned acc. | sparsity |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.inference} | {r.delta:.2f} | {r.pruning_factor:.2f} | {r.dense_accuracy:.4f} | "
            f"{r.pruned_accuracy:.4f} | {r.sparsity:.4f} |"
        )
    if times:
        ok = "within" if within_budget(times) else "over"
        lines += [
            "",
            "A move (re-score, re-threshold, evaluate, redraw) showed its new setting after a median "
            f"{times['delta_feedback_median_s']:.3f} s for δ and {times['p_feedback_median_s']:.3f} s for p, over "
            f"{times['moves']} moves each on this machine: {ok} the {BUDGET_S:g} s budget. A p move then computes "
            f"the Figure 4 curve at the new p (one evaluation per δ of the grid) and redraws: complete after a median "
            f"{times['p_update_median_s']:.3f} s.",
        ]
    return "\n".join(lines)


def sample_table(params: Mapping) -> pd.DataFrame:
    """``samples.describe`` of the explorer's two inference choices ("as trained", "shifted" to
    ``shift_classes``) for the report: its relevance samples and the test images it evaluates."""
    shift = {"shift_classes": list(params["shift_classes"])} if params.get("shift_classes") else None
    return describe(
        TrainConfig.from_mapping(params),
        PruneConfig.from_mapping(params),
        [int(params.get("seed", 0))],
        shift,
        names=("as trained", "shifted"),
        test_samples=params.get("eval_samples") or None,
    )


def static_folder(profile: str, results_root: str | Path) -> Path:
    """``results/<profile>/`` with a relative ``results_root`` taken from the repository root."""
    return results_dir(profile, resolve(results_root))
