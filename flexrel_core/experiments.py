"""The experiments behind the paper's Figures 1, 2, 4 and its cost table, and their summaries.

Every sweep starts from one trained dense model per seed (``pipeline.trained_model``, cached) and
its parameter relevance, computed once on the *inference* split and reused for every delta and
pruning factor (``pruning_scores(..., relevance=rel)``). Each point starts from a fresh copy of
the dense model, is pruned one-shot and, optionally, fine-tuned with its masks held fixed
(``training.train``). Every expensive point is cached under a hash of its configuration
(``cache.cached``): a rerun with nothing changed only loads results, an interrupted run resumes.

Conventions used throughout:

- Accuracies are fractions in [0, 1]; "points" are percentage points (100 x a difference).
- Fine-tuning at p = 0 is skipped (nothing was pruned, so there is nothing to recover): the
  fine-tuned accuracy at p = 0 *is* the dense accuracy, and extra training of the dense model
  never enters the comparison.
- Under an inference-distribution shift (``shift_classes`` / ``shift_weights`` of
  ``data.load_dataset``) the model is trained and fine-tuned on the training distribution;
  relevance is computed on the shifted inference split and accuracy measured on the shifted test
  split, against the dense model's accuracy on that same shifted test split.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import cached
from .config import TrainConfig, config_hash, dict_hash
from .data import DataSplits
from .layers import prunable_layers
from .masks import load_state, prune, sparsity
from .paths import REPO_ROOT, cache_dir
from .pipeline import data_for, new_model, relevance_for, trained_model
from .progress import progress
from .relevance import parameter_relevance
from .scores import check_delta, magnitude, normalize_scores, pruning_scores
from .training import evaluate, select_device, train

METHODS = ("magnitude", "relevance", "flexrel")
SCHEDULES = {"one-shot": "one_shot_accuracy", "fine-tuned": "fine_tuned_accuracy"}
THRESHOLDS = (1.0, 2.0, 5.0)
DELTA_RULE = (
    "the δ with the highest validation accuracy, averaged over the pruning factors and seeds of the sweep "
    "(ties go to the smaller δ); its accuracy is then reported on the test split"
)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How each point is scored, pruned and fine-tuned (shared by every sweep of a notebook)."""

    inference_samples: int | None = 256  # inference samples for LRP (None: the whole split)
    composite: str = "epsilon_plus_flat"  # zennit rule set
    aggregate: str = "abs"  # how per-sample relevance is made non-negative
    normalize: str = "layer"  # min-max of M and R per layer or over the whole model
    scope: str = "global"  # one global threshold, or the same fraction in every layer
    fine_tune_epochs: int = 3  # 0: one-shot only
    fine_tune_lr: float = 1e-3
    fine_tune_batch_size: int = 64
    fine_tune_optimizer: str = "adam"

    @classmethod
    def from_mapping(cls, mapping: dict) -> PruneConfig:
        """The fields found in ``mapping`` (e.g. a notebook's ``globals()``)."""
        return cls(**{f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping})


@dataclasses.dataclass
class Setup:
    """One trained dense model (one seed), its data, its relevance and its dense accuracies."""

    cfg: TrainConfig
    data: DataSplits
    state: dict[str, torch.Tensor]
    relevance: dict[str, torch.Tensor]
    relevance_id: str  # names the relevance: model, inference data, samples, rules
    eval_id: str  # names the evaluation data: dataset split of this seed, plus any shift
    dense_val_accuracy: float
    dense_test_accuracy: float

    def fresh_model(self) -> nn.Module:
        """A new copy of the dense model (never downloads weights: the state is loaded)."""
        model = new_model(dataclasses.replace(self.cfg, pretrained=False), self.data)
        return load_state(model, self.state).eval()


def shift_spec(shift_classes: Sequence[int] | None = None, shift_weights: Sequence[float] | None = None) -> dict:
    """``load_dataset`` keyword arguments of an inference-distribution shift; ``{}`` for none."""
    spec = {"shift_classes": shift_classes, "shift_weights": shift_weights}
    return {k: [v.item() if hasattr(v, "item") else v for v in vals] for k, vals in spec.items() if vals is not None}


def prepare(
    cfg: TrainConfig,
    pcfg: PruneConfig,
    *,
    shift: dict | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> Setup:
    """Train (or load) the dense model of ``cfg``, compute (or load) its relevance on the
    (possibly shifted) inference split, and measure its dense accuracy on val and test."""
    shift = shift or {}
    data = data_for(cfg, **shift)
    model, _ = trained_model(cfg, data, cache_root=cache_root, device=device)
    eval_id = config_hash(cfg) + (f"-shift-{dict_hash(shift)}" if shift else "")
    rel_config = {"key": eval_id, "samples": pcfg.inference_samples, "composite": pcfg.composite}
    relevance = relevance_for(
        model,
        data,
        eval_id,
        samples=pcfg.inference_samples,
        composite=pcfg.composite,
        aggregate=pcfg.aggregate,
        cache_root=cache_root,
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    dense = cached(
        cache_dir("dense_eval", dict_hash({"eval": eval_id}), cache_root) / "accuracy.pt",
        lambda: {"val": _accuracy(model, data.val, device), "test": _accuracy(model, data.test, device)},
        config={"eval": eval_id},
    )
    relevance_id = dict_hash({**rel_config, "aggregate": pcfg.aggregate})
    return Setup(cfg, data, state, relevance, relevance_id, eval_id, dense["val"], dense["test"])


def _accuracy(model: nn.Module, dataset, device: str) -> float:
    return evaluate(model, dataset, device=device)


def method_delta(method: str, delta: float) -> float:
    """The delta a method stands for: magnitude is delta = 0, relevance delta = 1, FlexRel ``delta``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return {"magnitude": 0.0, "relevance": 1.0}.get(method, check_delta(delta))


def pruned_model(setup: Setup, delta: float, p: float, pcfg: PruneConfig) -> nn.Module:
    """A fresh copy of the dense model pruned one-shot to factor ``p`` by s = (1-δ)·M_norm + δ·R_norm."""
    model = setup.fresh_model()
    scores = pruning_scores(
        model,
        method="flexrel",
        delta=delta,
        normalize=pcfg.normalize,
        relevance=setup.relevance if delta > 0 else None,
    )
    prune(model, scores, p, scope=pcfg.scope)
    return model


def _mask_config(setup: Setup, delta: float, p: float, pcfg: PruneConfig) -> dict:
    """What determines a pruned model's masks (relevance only matters when delta > 0)."""
    return {
        "model": config_hash(setup.cfg),
        "delta": float(delta),
        "p": float(p),
        "normalize": pcfg.normalize,
        "scope": pcfg.scope,
        "relevance": setup.relevance_id if delta > 0 else None,
    }


def _fine_tune_config(pcfg: PruneConfig, seed: int) -> dict:
    return {
        "epochs": pcfg.fine_tune_epochs,
        "lr": pcfg.fine_tune_lr,
        "batch_size": pcfg.fine_tune_batch_size,
        "optimizer": pcfg.fine_tune_optimizer,
        "seed": seed,
    }


def fine_tuned_state(
    setup: Setup, delta: float, p: float, pcfg: PruneConfig, *, device: str = "auto", memo: dict | None = None
) -> dict[str, torch.Tensor]:
    """State of the pruned model fine-tuned on the training split with its masks fixed.

    It does not depend on the evaluation data, and with delta = 0 not on the inference data either:
    ``memo`` (a dict keyed by the configuration's hash) lets the conditions of one point share it.
    States are not written to disk (VGG16 would need half a GB per point); the point results are."""
    config = {**_mask_config(setup, delta, p, pcfg), "fine_tune": _fine_tune_config(pcfg, setup.cfg.seed)}
    memo = {} if memo is None else memo
    key = dict_hash(config)
    if key not in memo:
        memo[key] = _fine_tune(setup, delta, p, pcfg, device)
    return memo[key]


def _fine_tune(setup: Setup, delta: float, p: float, pcfg: PruneConfig, device: str) -> dict[str, torch.Tensor]:
    model = pruned_model(setup, delta, p, pcfg)
    train(
        model,
        setup.data.train,
        epochs=pcfg.fine_tune_epochs,
        lr=pcfg.fine_tune_lr,
        batch_size=pcfg.fine_tune_batch_size,
        optimizer=pcfg.fine_tune_optimizer,
        seed=setup.cfg.seed,
        device=device,
        desc="fine-tune",
        show_progress=False,  # hundreds of short fine-tunes: the sweep's own bar shows progress
    )
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def evaluate_point(
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    *,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
    memo: dict | None = None,
) -> dict:
    """Accuracy (val and test) and measured sparsity of one point, one-shot and fine-tuned (cached;
    ``memo``: see ``fine_tuned_state``).

    Returns ``{"one_shot": {"val", "test", "sparsity"}, "fine_tuned": {...} or None}``."""
    fine_tune = pcfg.fine_tune_epochs > 0
    config = {
        **_mask_config(setup, delta, p, pcfg),
        "eval": setup.eval_id,
        "fine_tune": _fine_tune_config(pcfg, setup.cfg.seed) if fine_tune else None,
    }

    def measure(model: nn.Module) -> dict:
        return {
            "val": _accuracy(model, setup.data.val, device),
            "test": _accuracy(model, setup.data.test, device),
            "sparsity": sparsity(model)["overall"],
        }

    def compute() -> dict:
        one_shot = measure(pruned_model(setup, delta, p, pcfg))
        if not fine_tune:
            return {"one_shot": one_shot, "fine_tuned": None}
        if p == 0:  # nothing pruned, nothing to recover: the dense model itself (module docstring)
            return {"one_shot": one_shot, "fine_tuned": dict(one_shot)}
        state = fine_tuned_state(setup, delta, p, pcfg, device=device, memo=memo)
        return {"one_shot": one_shot, "fine_tuned": measure(load_state(setup.fresh_model(), state))}

    return cached(cache_dir("points", dict_hash(config), cache_root) / "point.pt", compute, config=config)


def accuracy_sweep(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    methods: Sequence[str] = METHODS,
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    delta: float = 0.5,
    shift: dict | None = None,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> pd.DataFrame:
    """Figure 2: test accuracy against pruning factor, one row per (condition, method, p, seed).

    ``condition`` is ``"in-distribution"`` and, when ``shift`` is non-empty, also ``"shifted"``
    (relevance on the shifted inference split, accuracy on the shifted test split). Columns:
    condition, method, delta, p, seed, dense_accuracy, one_shot_accuracy, fine_tuned_accuracy
    (NaN without fine-tuning), sparsity, fine_tuned_sparsity (measured on the weights).
    """
    conditions = {"in-distribution": {}, **({"shifted": shift} if shift else {})}
    deltas = {m: method_delta(m, delta) for m in methods}
    bar = progress(total=len(seeds) * len(conditions) * len(methods) * len(pruning_factors), desc="fig2 points")
    rows = []
    for seed in seeds:
        cfg = dataclasses.replace(base, seed=int(seed))
        setups = {
            c: prepare(cfg, pcfg, shift=spec, cache_root=cache_root, device=device) for c, spec in conditions.items()
        }
        for method in methods:
            for p in pruning_factors:
                memo: dict = {}  # a magnitude model fine-tuned once serves every condition
                for condition, setup in setups.items():
                    point = evaluate_point(
                        setup, deltas[method], float(p), pcfg, cache_root=cache_root, device=device, memo=memo
                    )
                    tuned = point["fine_tuned"] or {}
                    rows.append(
                        {
                            "condition": condition,
                            "method": method,
                            "delta": deltas[method],
                            "p": float(p),
                            "seed": int(seed),
                            "dense_accuracy": setup.dense_test_accuracy,
                            "one_shot_accuracy": point["one_shot"]["test"],
                            "fine_tuned_accuracy": tuned.get("test", np.nan),
                            "sparsity": point["one_shot"]["sparsity"],
                            "fine_tuned_sparsity": tuned.get("sparsity", np.nan),
                        }
                    )
                    bar.update()
    bar.close()
    order = ["condition", "method", "p", "seed"]
    return pd.DataFrame(rows).sort_values(order, kind="stable", ignore_index=True)


def delta_sweep(
    base: TrainConfig,
    pcfg: PruneConfig,
    *,
    deltas: Sequence[float],
    pruning_factors: Sequence[float],
    seeds: Sequence[int],
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> pd.DataFrame:
    """Figure 4: validation and test accuracy against δ for several pruning factors.

    One row per (schedule, delta, p, seed); schedules ``one-shot`` and (with fine-tuning)
    ``fine-tuned``. Columns: schedule, delta, p, seed, val_accuracy, test_accuracy, sparsity,
    dense_val_accuracy, dense_test_accuracy.
    """
    bar = progress(total=len(seeds) * len(deltas) * len(pruning_factors), desc="fig4 points")
    rows = []
    for seed in seeds:
        setup = prepare(dataclasses.replace(base, seed=int(seed)), pcfg, cache_root=cache_root, device=device)
        for delta in deltas:
            for p in pruning_factors:
                point = evaluate_point(setup, check_delta(delta), float(p), pcfg, cache_root=cache_root, device=device)
                for schedule, key in (("one-shot", "one_shot"), ("fine-tuned", "fine_tuned")):
                    if point[key] is None:
                        continue
                    rows.append(
                        {
                            "schedule": schedule,
                            "delta": float(delta),
                            "p": float(p),
                            "seed": int(seed),
                            "val_accuracy": point[key]["val"],
                            "test_accuracy": point[key]["test"],
                            "sparsity": point[key]["sparsity"],
                            "dense_val_accuracy": setup.dense_val_accuracy,
                            "dense_test_accuracy": setup.dense_test_accuracy,
                        }
                    )
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def recommend_delta(df: pd.DataFrame, schedule: str = "one-shot") -> dict:
    """The δ the workbook recommends, by ``DELTA_RULE``, chosen on validation data only.

    Returns ``{"delta", "rule", "schedule", "val_accuracy", "test_accuracy", "test_accuracy_by_delta",
    "best_delta_per_p"}`` (accuracies are means over pruning factors and seeds)."""
    sub = df[df["schedule"] == schedule]
    if sub.empty:
        raise ValueError(f"no rows for schedule {schedule!r}; have {sorted(df['schedule'].unique())}")
    by_delta = sub.groupby("delta")[["val_accuracy", "test_accuracy"]].mean().sort_index()
    best = by_delta["val_accuracy"].max()
    delta = float(by_delta.index[np.isclose(by_delta["val_accuracy"], best, rtol=0, atol=1e-9)].min())
    per_p = {}
    for p, g in sub.groupby("p"):
        val = g.groupby("delta")["val_accuracy"].mean().sort_index()
        per_p[float(p)] = float(val.index[np.isclose(val, val.max(), rtol=0, atol=1e-9)].min())
    return {
        "delta": delta,
        "rule": DELTA_RULE,
        "schedule": schedule,
        "val_accuracy": float(by_delta.loc[delta, "val_accuracy"]),
        "test_accuracy": float(by_delta.loc[delta, "test_accuracy"]),
        "test_accuracy_by_delta": {float(d): float(a) for d, a in by_delta["test_accuracy"].items()},
        "best_delta_per_p": per_p,
    }


def highest_p_within(drop_points: pd.Series, threshold: float) -> float:
    """Highest p of the grid up to which the accuracy drop (points, indexed by p) stays within
    ``threshold`` at *every* p of the grid; NaN if the smallest p already leaves the band."""
    best = np.nan
    for p, drop in drop_points.sort_index().items():
        if drop > threshold + 1e-9:
            break
        best = float(p)
    return best


def pruning_summary(df: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """Per (condition, schedule, threshold): each method's highest pruning factor whose mean
    accuracy (over seeds) stays within ``threshold`` points of the mean dense accuracy
    (``highest_p_within``), and ``flexrel_gain`` = FlexRel's p minus magnitude's p.

    Columns: condition, schedule, threshold_points, dense_accuracy, max_p_<method>..., flexrel_gain.
    """
    df = df if "condition" in df else df.assign(condition="in-distribution")
    methods = [m for m in METHODS if m in set(df["method"])] + sorted(set(df["method"]) - set(METHODS))
    rows = []
    for condition, g in df.groupby("condition", sort=False):
        dense = float(g.groupby("seed")["dense_accuracy"].first().mean())
        for schedule, column in SCHEDULES.items():
            if column not in g or g[column].isna().all():
                continue
            drop = (100.0 * (g["dense_accuracy"] - g[column])).groupby([g["method"], g["p"]]).mean()
            for t in thresholds:
                row = {"condition": condition, "schedule": schedule, "threshold_points": float(t)}
                row["dense_accuracy"] = dense
                for m in methods:
                    row[f"max_p_{m}"] = highest_p_within(drop.loc[m], t)
                if "flexrel" in methods and "magnitude" in methods:
                    row["flexrel_gain"] = round(row["max_p_flexrel"] - row["max_p_magnitude"], 10)
                rows.append(row)
    return pd.DataFrame(rows)


def curve_differences(df: pd.DataFrame, margin_points: float = 1.0) -> dict[tuple[str, str], tuple[list, list]]:
    """Per (condition, schedule): the pruning factors at which FlexRel's mean accuracy (over seeds)
    beats magnitude's by more than ``margin_points``, and those where magnitude beats FlexRel."""
    df = df if "condition" in df else df.assign(condition="in-distribution")
    out = {}
    for condition, g in df.groupby("condition", sort=False):
        for schedule, column in SCHEDULES.items():
            if column not in g or g[column].isna().all():
                continue
            mean = 100 * g.groupby(["method", "p"])[column].mean()
            diff = (mean.loc["flexrel"] - mean.loc["magnitude"]).sort_index()
            out[(condition, schedule)] = (
                [float(p) for p, d in diff.items() if d > margin_points],
                [float(p) for p, d in diff.items() if d < -margin_points],
            )
    return out


def claim_verdict(gains: Sequence[float]) -> tuple[str, str]:
    """Whether FlexRel reaches higher pruning factors than magnitude at the same accuracy, from its
    gains (one per threshold): ``(short verdict, plain-words sentence)``."""
    g = np.asarray([x for x in gains if not np.isnan(x)], dtype=float)
    if g.size == 0:
        return "undetermined", "no threshold could be evaluated"
    if (g > 0).all():
        return "holds", "FlexRel reaches a higher pruning factor than magnitude at every accuracy threshold"
    if (g >= 0).all() and (g > 0).any():
        return "holds partly", "FlexRel reaches a higher pruning factor at some thresholds and the same at the others"
    if (g == 0).all():
        return "does not hold", "FlexRel and magnitude reach the same pruning factor at every threshold"
    if (g < 0).all():
        return "does not hold", "magnitude reaches a higher pruning factor than FlexRel at every threshold"
    if (g <= 0).all():
        return (
            "does not hold",
            "magnitude reaches a higher pruning factor at some thresholds and the same at the others",
        )
    return "mixed", "FlexRel is ahead at some thresholds and behind at others"


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-markdown table of ``df`` (no index)."""
    cells = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def _pct(x: float) -> str:
    return "—" if x is None or np.isnan(x) else f"{100 * x:.1f} %"


def _p(x: float) -> str:
    return "none" if np.isnan(x) else f"{x:g}"


def fig2_report(df: pd.DataFrame, summary: pd.DataFrame, *, delta: float, fine_tune_epochs: int) -> str:
    """The Figure 2 section of REPORT.md: dense accuracy, each method's highest p within 1, 2 and 5
    points, FlexRel's gain over magnitude, and in plain words whether the paper's claim holds."""
    seeds = sorted(df["seed"].unique())
    grid = sorted(df["p"].unique())
    lines = [
        "## Figure 2 — accuracy against pruning factor",
        "",
        f"FlexRel with δ = {delta:g}; {len(seeds)} seed(s) (each its own data split and trained model); "
        f"pruning factors {', '.join(f'{p:g}' for p in grid)}; fine-tuning {fine_tune_epochs} epoch(s) "
        "with masks fixed (skipped at p = 0).",
        "",
    ]
    for condition, g in df.groupby("condition", sort=False):
        dense = g.groupby("seed")["dense_accuracy"].first()
        lines.append(
            f"- Dense test accuracy, {condition}: **{_pct(dense.mean())}** "
            f"(seeds: {', '.join(_pct(a) for a in dense)})."
        )
    methods = [c.removeprefix("max_p_") for c in summary.columns if c.startswith("max_p_")]
    table = summary.rename(columns={f"max_p_{m}": m for m in methods}).rename(
        columns={"threshold_points": "within (points)", "flexrel_gain": "FlexRel − magnitude"}
    )
    table = table.drop(columns=["dense_accuracy"])
    lines += [
        "",
        "Highest pruning factor whose mean accuracy (over seeds) stays within 1, 2 and 5 points of the dense "
        "accuracy at every pruning factor of the grid up to it (`fig2_summary.csv`):",
        "",
        markdown_table(table, ".4g"),
        "",
    ]
    verdicts = {}
    for (condition, schedule), g in summary.groupby(["condition", "schedule"], sort=False):
        verdicts[(condition, schedule)] = claim_verdict(g["flexrel_gain"].tolist())
        thresholds = "/".join(f"{t:g}" for t in g["threshold_points"])
        kept = "; ".join(
            f"{m} {'/'.join(_kept(p) for p in g[f'max_p_{m}'])}" for m in ("flexrel", "magnitude") if m in methods
        )
        lines.append(
            f"- {condition}, {schedule}: {verdicts[(condition, schedule)][1]} "
            f"(weights kept within {thresholds} points: {kept})."
        )
    lines += [
        "",
        "Where the mean curves of FlexRel and magnitude differ by more than 1 point (any accuracy level):",
        "",
    ]
    for (condition, schedule), (ahead, behind) in curve_differences(df).items():
        lines.append(
            f"- {condition}, {schedule}: FlexRel more accurate at p = {', '.join(f'{p:g}' for p in ahead) or 'none'}; "
            f"magnitude more accurate at p = {', '.join(f'{p:g}' for p in behind) or 'none'}."
        )
    ind = {s: v for (c, s), v in verdicts.items() if c == "in-distribution"}
    short = {v[0] for v in ind.values()}
    if short == {"holds"}:
        overall = "**holds here**: on in-distribution data FlexRel prunes further than magnitude at every threshold"
    elif short <= {"does not hold", "undetermined"}:
        overall = "**does not hold here**: on in-distribution data FlexRel never prunes further than magnitude"
    else:
        overall = "**holds only partly here**: on in-distribution data, " + "; ".join(
            f"{schedule}: {sentence}" for schedule, (_, sentence) in ind.items()
        )
    shifted = [f"{s} — {v[0]}" for (c, s), v in verdicts.items() if c == "shifted"]
    lines += [
        "",
        f'The paper\'s claim ("FlexRel reaches higher pruning factors at the same accuracy") {overall}.'
        + (f" Under the inference shift, per schedule: {'; '.join(shifted)}." if shifted else "")
        + " Gains are measured on the grid of pruning factors above, so a gain of 0 means the same grid point.",
    ]
    return "\n".join(lines)


def _kept(p: float) -> str:
    """Percentage of weights kept at pruning factor ``p``."""
    return "—" if np.isnan(p) else f"{100 * (1 - p):.3g} %"


def fig4_report(df: pd.DataFrame, rec: dict) -> str:
    """The Figure 4 section of REPORT.md: the recommended δ and the rule that chose it."""
    by = rec["test_accuracy_by_delta"]
    lines = [
        "## Figure 4 — accuracy against δ",
        "",
        f"Pruning factors {', '.join(f'{p:g}' for p in sorted(df['p'].unique()))}; "
        f"{df['seed'].nunique()} seed(s); δ grid {', '.join(f'{d:g}' for d in sorted(df['delta'].unique()))}.",
        "",
        f"**Recommended δ = {rec['delta']:g}** ({rec['schedule']}), chosen as {rec['rule']}.",
        f"Mean validation accuracy at that δ: {_pct(rec['val_accuracy'])}; mean test accuracy: "
        f"{_pct(rec['test_accuracy'])} (δ = 0, magnitude: {_pct(by.get(0.0, np.nan))}; "
        f"δ = 1, relevance: {_pct(by.get(1.0, np.nan))}).",
        "",
        "Best δ on validation data at each pruning factor: "
        + ", ".join(f"p = {p:g}: δ = {d:g}" for p, d in rec["best_delta_per_p"].items())
        + ".",
    ]
    return "\n".join(lines)


# --- Figure 1: which weights each method keeps ------------------------------------------------


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∧ b| / |a ∨ b| of two boolean masks (1 when both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def _values(t: torch.Tensor) -> np.ndarray:
    """Flat values for a CSV: booleans as they are, scores rounded to 6 decimals (keeps files small)."""
    flat = t.numpy().ravel()
    return flat if flat.dtype == bool else flat.round(6)


def mask_comparison(
    model: nn.Module,
    relevance: dict[str, torch.Tensor],
    *,
    layer: str,
    p: float,
    delta: float = 0.5,
    normalize: str = "layer",
    scope: str = "global",
    max_rows: int | None = None,
    max_cols: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Figure 1: the masks magnitude, relevance and FlexRel give at factor ``p``, seen on ``layer``.

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
    m_norm = normalize_scores(magnitude(model), normalize)[layer]
    r_norm = normalize_scores(relevance, normalize)[layer].to(m_norm.device)
    views = {
        "m_norm": m_norm,
        "r_norm": r_norm,
        "score": (1 - delta) * m_norm + delta * r_norm,
        **{f"kept_{m}": masks[m][layer] for m in METHODS},
    }
    views = {k: v.detach().cpu().reshape(v.shape[0], -1)[:max_rows, :max_cols] for k, v in views.items()}
    rows, cols = np.indices(views["m_norm"].shape)
    weights = pd.DataFrame(
        {"layer": layer, "row": rows.ravel(), "col": cols.ravel(), **{k: _values(v) for k, v in views.items()}}
    )
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
    return {"weights": weights, "overlap": overlap, "kept": kept}


def fig1_report(result: dict[str, pd.DataFrame]) -> str:
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


# --- Table 1: cost of each technique ----------------------------------------------------------


@contextmanager
def _quiet_stderr():
    """Silence fd 2 (the profiler's C++ start/stop chatter) for the duration of the block."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory that ``fn()`` allocates above what was allocated before it.

    On CUDA from the caching allocator's statistics; on CPU from the allocation events of
    ``torch.profiler`` (``profile_memory=True``): the maximum of their running sum."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        with _quiet_stderr():
            prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    running = peak = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        running += int(e["args"]["Bytes"])
        peak = max(peak, running)
    return peak


def score_costs(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    methods: Sequence[str] = METHODS,
    delta: float = 0.5,
    p: float = 0.9,
    normalize: str = "layer",
    scope: str = "global",
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    batch_size: int | None = 256,
    repeats: int = 5,
    device: str = "cpu",
    key: str | None = None,
    cache_root: str | Path | None = None,
) -> pd.DataFrame:
    """Table 1: per method, the wall time (median, min and max of ``repeats`` after one warm-up) and peak tensor
    memory to compute its scores from ``model`` and the inference ``inputs`` (relevance included
    for relevance and FlexRel), and the size in bytes of the model pruned to ``p`` in the project's
    sparse encoding (``encoding.encode_sparse``). Cached under ``key`` when ``cache_root`` is given."""
    from .encoding import encode_sparse  # written alongside; imported here so the rest works without it

    dev = select_device(device)
    model = model.to(dev).eval()
    inputs = inputs.to(dev)

    def scores_of(method: str) -> dict[str, torch.Tensor]:
        rel = None
        if method != "magnitude":
            rel = parameter_relevance(model, inputs, composite=composite, aggregate=aggregate, batch_size=batch_size)
        return pruning_scores(model, method=method, delta=delta, normalize=normalize, relevance=rel)

    def compute() -> list[dict]:
        rows = []
        dense_bytes = len(encode_sparse(model.cpu()))
        model.to(dev)
        for method in progress(methods, desc="score costs"):
            scores_of(method)  # warm-up
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                scores_of(method)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - start)
            memory = peak_memory(lambda method=method: scores_of(method), dev)
            pruned = copy.deepcopy(model).cpu()
            prune(pruned, {k: v.cpu() for k, v in scores_of(method).items()}, p, scope=scope)
            rows.append(
                {
                    "method": method,
                    "score_time_s": statistics.median(times),
                    "score_time_min_s": min(times),
                    "score_time_max_s": max(times),
                    "peak_memory_mib": memory / 2**20,
                    "p": float(p),
                    "nonzero_weights": sum(int((m.weight != 0).sum()) for m in prunable_layers(pruned).values()),
                    "pruned_model_bytes": len(encode_sparse(pruned)),
                    "dense_model_bytes": dense_bytes,
                    "inference_samples": len(inputs),
                    "device": dev.type,
                }
            )
        return rows

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


def table1_report(costs: pd.DataFrame) -> str:
    """The Table 1 section of REPORT.md: time, memory and bytes per method."""
    t = costs.set_index("method")
    table = pd.DataFrame(
        {
            "method": t.index,
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
        f"(dense model: {int(t['dense_model_bytes'].iloc[0])} bytes).",
        "",
        markdown_table(table, ".4g"),
    ]
    if {"magnitude", "flexrel"} <= set(t.index) and t.loc["magnitude", "score_time_min_s"] > 0:
        ratio = t.loc["flexrel", "score_time_min_s"] / t.loc["magnitude", "score_time_min_s"]
        lines += ["", f"FlexRel scoring takes {ratio:.3g}× the time of magnitude scoring (it adds one LRP pass)."]
    return "\n".join(lines)
