"""Pruned points of a prepared setup (``pipeline.prepare``): the dense model of one seed pruned to
a factor p by s = (1 - δ)·M_norm + δ·R_norm, one-shot or fine-tuned with its masks held fixed, or
reached in several prune -> fine-tune steps (the iterative schedule); their accuracies are cached,
so a rerun only loads them.

A point can also be pruned by any other method of ``scores.ALL_METHODS`` (``method=``): the
data-aware baselines Wanda and Taylor, whose signals come from the same inference sample as
relevance (``signals.signal_for``, cached), random scores seeded by the setup's seed, and
FlexRel with the Taylor score in place of relevance. The cache key of such a point names the
method and what its scores depend on (the signal, the seed); the points of the paper's three
methods (``method`` left at ``"flexrel"`` with δ = 0, 1 or FlexRel's δ) keep their keys.

The conventions of ``pipeline`` hold here: accuracies are fractions, every stage is computed on one
CPU thread (``training.stage_threads``), fine-tuning at p = 0 is skipped (the fine-tuned accuracy
at p = 0 is the dense accuracy), and under a shift the model is fine-tuned on the training
distribution and measured on the shifted test split.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import tensors
from ..masks import load_state, prune, sparsity
from ..relevance import parameter_relevance
from ..scores import METHODS, SIGNALS, check_delta, check_method, method_delta, pruning_scores, shuffle_within_layers
from ..training import evaluate, select_device, stage_threads, train
from .cache import cached
from .config import PruneConfig, dict_hash
from .paths import REPO_ROOT, cache_dir
from .pipeline import Setup
from .signals import signal_for, signal_id

CACHE = REPO_ROOT / "cache"


def _canonical(method: str, delta: float) -> tuple[str, float | None]:
    """(method, δ) as points key them: the paper's three methods are FlexRel at δ = 0, 1 or ``delta``;
    FlexRel-with-Taylor has its δ; Wanda, Taylor and random have none."""
    if check_method(method) in METHODS:
        return "flexrel", method_delta(method, delta)
    return method, check_delta(delta) if method == "flexrel_taylor" else None


def pruned_model(
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    device: str = "cpu",
    *,
    method: str = "flexrel",
    cache_root: str | Path = CACHE,
) -> nn.Module:
    """A fresh copy of the dense model pruned one-shot to factor ``p`` by s = (1-δ)·M_norm + δ·R_norm
    (``method="flexrel"``, the default) or by another method of ``scores.ALL_METHODS`` (``delta`` is
    then used by ``"flexrel_taylor"`` only), scored and pruned on ``device``; Wanda's and Taylor's
    signals are loaded from (or computed into) ``cache_root``."""
    method, delta = _canonical(method, delta)
    model = setup.fresh_model(device)
    signal = None
    if method in SIGNALS:
        signal = signal_for(setup, SIGNALS[method], pcfg, cache_root=cache_root, device=device)
    scores = pruning_scores(
        model,
        method=method,
        delta=0.5 if delta is None else delta,
        normalize=pcfg.normalize,
        relevance=setup.relevance if method == "flexrel" and delta > 0 else None,
        signal=signal,
        seed=setup.cfg.seed,
    )
    prune(model, scores, p, scope=pcfg.scope)
    return model


def _mask_config(setup: Setup, delta: float, p: float, pcfg: PruneConfig, method: str = "flexrel") -> dict:
    """What determines a pruned model's masks (relevance only matters when delta > 0). Other methods
    than the paper's add their name and what their scores depend on: the signal, or the seed."""
    method, delta = _canonical(method, delta)
    if method == "flexrel":
        return {
            "model": setup.model_id,
            "delta": float(delta),
            "p": float(p),
            "normalize": pcfg.normalize,
            "scope": pcfg.scope,
            "relevance": setup.relevance_id if delta > 0 else None,
        }
    return {
        "model": setup.model_id,
        "method": method,
        "delta": delta,
        "p": float(p),
        "normalize": pcfg.normalize if method == "flexrel_taylor" else None,
        "scope": pcfg.scope,
        "signal": signal_id(setup, SIGNALS[method], pcfg) if method in SIGNALS else None,
        "seed": setup.cfg.seed if method == "random" else None,
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
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    *,
    device: str = "auto",
    memo: dict | None = None,
    method: str = "flexrel",
    cache_root: str | Path = CACHE,
) -> dict[str, torch.Tensor]:
    """State of the pruned model (``pruned_model``) fine-tuned on the training split with its masks fixed.

    It does not depend on the evaluation data, and with delta = 0 (or random scores) not on the
    inference data either: ``memo`` (a dict keyed by the configuration's hash) lets the conditions
    of one point share it, and a budget of fewer epochs share a longer one's run: fine-tuning for
    E epochs leaves in ``memo`` the state after every epoch e <= E, which is exactly what a run of
    e epochs returns (``training.train``'s ``after_epoch``). States are not written to disk (VGG16
    would need half a GB per point); the point results are."""
    memo = {} if memo is None else memo
    key = _state_key(setup, delta, p, pcfg, method)
    if key not in memo:
        _fine_tune(setup, delta, p, pcfg, device, memo, method, cache_root)
    return memo[key]


def _state_key(
    setup: Setup, delta: float, p: float, pcfg: PruneConfig, method: str = "flexrel", epochs: int | None = None
) -> str:
    """Names a fine-tuned state: the masks and the fine-tuning (``epochs``: instead of ``pcfg``'s)."""
    tune = _fine_tune_config(pcfg, setup.cfg.seed) | ({"epochs": epochs} if epochs is not None else {})
    return dict_hash({**_mask_config(setup, delta, p, pcfg, method), "fine_tune": tune})


def _fine_tune(
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    device: str,
    memo: dict,
    method: str,
    cache_root: str | Path,
) -> None:
    model = pruned_model(setup, delta, p, pcfg, device, method=method, cache_root=cache_root)

    def keep(epoch: int, net: nn.Module) -> None:
        memo[_state_key(setup, delta, p, pcfg, method, epoch)] = {
            k: v.detach().cpu().clone() for k, v in net.state_dict().items()
        }

    _tune(setup, model, pcfg, setup.cfg.seed, device, after_epoch=keep)


def _tune(setup: Setup, model: nn.Module, pcfg: PruneConfig, seed: int, device: str, after_epoch=None) -> None:
    """Fine-tune ``model`` in place on the training split with its masks fixed, as ``pcfg`` says."""
    train(
        model,
        setup.data.train,
        epochs=pcfg.fine_tune_epochs,
        lr=pcfg.fine_tune_lr,
        batch_size=pcfg.fine_tune_batch_size,
        optimizer=pcfg.fine_tune_optimizer,
        seed=seed,
        device=device,
        desc="fine-tune",
        show_progress=False,  # hundreds of short fine-tunes: the sweep's own bar shows progress
        after_epoch=after_epoch,
    )


def _measure(setup: Setup, model: nn.Module, device: str) -> dict:
    """Validation and test accuracy and measured sparsity of a pruned model."""
    return {
        "val": evaluate(model, setup.data.val, device=device),
        "test": evaluate(model, setup.data.test, device=device),
        "sparsity": sparsity(model)["overall"],
    }


def evaluate_point(
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    *,
    cache_root: str | Path = CACHE,
    device: str = "auto",
    memo: dict | None = None,
    method: str = "flexrel",
) -> dict:
    """Accuracy (val and test) and measured sparsity of one point, one-shot and fine-tuned (cached;
    ``memo``: see ``fine_tuned_state``), pruned by s = (1-δ)·M_norm + δ·R_norm or by ``method``
    (``pruned_model``).

    Returns ``{"one_shot": {"val", "test", "sparsity"}, "fine_tuned": {...} or None}``."""
    fine_tune = pcfg.fine_tune_epochs > 0
    config = {
        **_mask_config(setup, delta, p, pcfg, method),
        "eval": setup.eval_id,
        "fine_tune": _fine_tune_config(pcfg, setup.cfg.seed) if fine_tune else None,
    }

    @stage_threads(device)
    def compute() -> dict:
        model = pruned_model(setup, delta, p, pcfg, device, method=method, cache_root=cache_root)
        one_shot = _measure(setup, model, device)
        if not fine_tune:
            return {"one_shot": one_shot, "fine_tuned": None}
        if p == 0:  # nothing pruned, nothing to recover: the dense model itself (module docstring)
            return {"one_shot": one_shot, "fine_tuned": dict(one_shot)}
        state = fine_tuned_state(setup, delta, p, pcfg, device=device, memo=memo, method=method, cache_root=cache_root)
        return {
            "one_shot": one_shot,
            "fine_tuned": _measure(setup, load_state(setup.fresh_model(device), state), device),
        }

    return cached(cache_dir("points", dict_hash(config), cache_root) / "point.pt", compute, config=config)


def iterative_steps(p: float, steps: int) -> list[float]:
    """Pruning factors of an iterative schedule reaching ``p`` in ``steps`` steps, removing the same
    fraction of the remaining weights at each: p_i = 1 - (1 - p)^(i / steps) (the last is ``p``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [1.0 - (1.0 - p) ** (i / steps) for i in range(1, steps)] + [float(p)]


def iterative_point(
    setup: Setup,
    delta: float,
    p: float,
    pcfg: PruneConfig,
    steps: int,
    *,
    cache_root: str | Path = CACHE,
    device: str = "auto",
) -> dict:
    """The iterative schedule (cached): reach ``p`` in ``steps`` prune -> fine-tune steps
    (``iterative_steps``), re-scoring between them -- relevance recomputed by LRP on the pruned,
    fine-tuned model over the same inference samples (``setup.relevance_sample``) -- with
    ``pcfg.fine_tune_epochs`` epochs after every step; masks only shrink. Returns ``{"val", "test",
    "sparsity"}`` of the final model."""
    config = {
        **_mask_config(setup, delta, p, pcfg),
        "eval": setup.eval_id,
        "fine_tune": _fine_tune_config(pcfg, setup.cfg.seed),
        "steps": int(steps),
        "aggregate": pcfg.aggregate,
        "target": pcfg.lrp_target,
        "control": pcfg.relevance_control,
        "samples": pcfg.inference_samples,
    }

    @stage_threads(device)
    def compute() -> dict:
        dev = select_device(device)
        model = setup.fresh_model(dev)
        x, y = tensors(setup.relevance_sample)
        for step, p_step in enumerate(iterative_steps(p, steps), start=1):
            relevance = None
            if delta > 0:
                relevance = parameter_relevance(
                    model.to(dev),
                    x.to(dev),
                    y.to(dev) if pcfg.lrp_target == "label" else None,
                    composite=pcfg.composite,
                    aggregate=pcfg.aggregate,
                    batch_size=pcfg.lrp_batch_size,
                )
                if pcfg.relevance_control == "shuffled":
                    relevance = shuffle_within_layers(relevance, seed=setup.cfg.seed + step)
            scores = pruning_scores(model, method="flexrel", delta=delta, normalize=pcfg.normalize, relevance=relevance)
            prune(model, scores, p_step, scope=pcfg.scope)
            _tune(setup, model, pcfg, setup.cfg.seed * 1_000 + step, device)
        return _measure(setup, model, device)

    return cached(cache_dir("iterative", dict_hash(config), cache_root) / "point.pt", compute, config=config)
