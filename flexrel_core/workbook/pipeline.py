"""Cached stages every figure shares: data, the trained dense model, its relevance, and pruned points.

Each stage is keyed by a hash of its configuration (``config.py``), skips itself when its output
exists, and writes the configuration beside its output (``cache.cached``). A *point* is the dense
model of one seed pruned one-shot to a factor p by s = (1 - δ)·M_norm + δ·R_norm and, optionally,
fine-tuned with its masks held fixed; its accuracies are cached, so a rerun only loads them.

Conventions used throughout:

- Accuracies are fractions in [0, 1].
- On a CPU every stage is computed with one torch thread (``training.stage_threads``), so its
  numbers do not depend on the core count or on which process or notebook computes it first;
  sweeps run their independent pieces in worker processes instead (``parallel.run_tasks``).
- Fine-tuning at p = 0 is skipped (nothing was pruned, so there is nothing to recover): the
  fine-tuned accuracy at p = 0 *is* the dense accuracy, and extra training of the dense model
  never enters a comparison.
- Under an inference-distribution shift (``shift_classes`` / ``shift_weights`` of
  ``data.load_dataset``) the model is trained and fine-tuned on the training distribution;
  relevance is computed on the shifted inference split and accuracy measured on the shifted test
  split, against the dense model's accuracy on that same shifted test split.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..data import DataSplits, class_counts, data_fingerprint, draw, load_dataset, tensors
from ..masks import load_state, prune, sparsity
from ..models import build_model
from ..parallel import run_tasks
from ..relevance import parameter_relevance
from ..scores import pruning_scores, shuffle_within_layers
from ..training import evaluate, select_device, stage_threads, train
from .cache import cached
from .config import PruneConfig, TrainConfig, as_dict, config_hash, dict_hash
from .paths import REPO_ROOT, cache_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


def _one_thread(device: str) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """Computes a stage under ``training.stage_threads``: its numbers do not depend on the core count
    or on which process computes it."""

    def wrap(compute: Callable[[], T]) -> Callable[[], T]:
        @functools.wraps(compute)
        def run() -> T:
            with stage_threads(device):
                return compute()

        return run

    return wrap


def data_for(cfg: TrainConfig, **shift) -> DataSplits:
    """The dataset a training configuration names (``shift``: ``shift_classes``/``shift_weights``)."""
    return load_dataset(
        cfg.dataset,
        cfg.data_root,
        seed=cfg.seed,
        image_size=cfg.image_size,
        limit=cfg.limit,
        resize=cfg.resize,
        **shift,
    )


def model_id(cfg: TrainConfig) -> str:
    """Names the trained model of ``cfg`` in cache keys: the configuration's hash and, for data read
    from files, the data's fingerprint (``data.data_fingerprint``), so a changed folder (an image
    added, removed or replaced) trains a new model instead of reusing the old folder's."""
    fp = data_fingerprint(cfg.dataset, cfg.data_root)
    return config_hash(cfg) + (f"-data-{fp[:16]}" if fp else "")


def relevance_sample(data: DataSplits, samples: int | None, seed: int) -> torch.utils.data.Dataset:
    """The inference samples relevance is computed on: a seeded random sample of ``samples`` images
    of ``data.inference``, stratified by class (``data.draw``; the whole split when ``samples`` is
    None or not smaller). The labels only stratify the draw: they stand for the deployment
    distribution, which a label-sorted split's first images would not."""
    return draw(data.inference, samples, seed)


def new_model(cfg: TrainConfig, data: DataSplits) -> nn.Module:
    """An untrained (or ImageNet-pretrained) model shaped for ``data``."""
    c, h, _ = data.input_shape
    return build_model(
        cfg.model,
        num_classes=data.num_classes,
        in_channels=c,
        image_size=h,
        batch_norm=cfg.batch_norm,
        pretrained=cfg.pretrained,
    )


def trained_model(
    cfg: TrainConfig,
    data: DataSplits | None = None,
    *,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> tuple[nn.Module, dict]:
    """The dense model trained per ``cfg`` (cached) and ``{"val_accuracy", "test_accuracy", ...}``."""
    data = data if data is not None else data_for(cfg)
    folder = cache_dir("models", model_id(cfg), cache_root)

    @_one_thread(device)
    def compute() -> dict:
        log.info("training %s on %s (%d epochs)", cfg.model, cfg.dataset, cfg.epochs)
        torch.manual_seed(cfg.seed)
        model = new_model(cfg, data)
        losses = train(
            model,
            data.train,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            seed=cfg.seed,
            device=device,
            desc="train dense",
        )
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        return {"state": state, "losses": losses, "val_accuracy": evaluate(model, data.val, device=device)}

    result = cached(folder / "model.pt", compute, config=as_dict(cfg))
    model = new_model(dataclasses.replace(cfg, pretrained=False), data)
    load_state(model, result["state"])
    return model.eval(), {"losses": result["losses"], "val_accuracy": result["val_accuracy"]}


def relevance_for(
    model: nn.Module,
    data: DataSplits,
    key: str,
    *,
    samples: int | None = None,
    seed: int,
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    lrp_target: str = "predicted",
    batch_size: int | None = 256,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> dict[str, torch.Tensor]:
    """Parameter relevance of ``model`` on ``relevance_sample(data, samples, seed)``, cached under
    ``key`` (a string naming the model state and the inference data, e.g. a config hash) with the
    sample's size, seed and class counts.

    LRP starts from the predicted class (inference data comes without labels) or, with
    ``lrp_target="label"``, from the true label. It runs on ``device`` in batches of ``batch_size``
    samples (the sum over samples does not depend on the batching); the result is kept on the CPU."""
    sample = relevance_sample(data, samples, seed)
    config = {
        "key": key,
        "samples": len(sample),
        "draw_seed": seed if len(sample) < len(data.inference) else None,
        "class_counts": class_counts(sample, data.num_classes),
        "composite": composite,
        "aggregate": aggregate,
    }
    if lrp_target != "predicted":
        config["target"] = lrp_target
    folder = cache_dir("relevance", dict_hash(config), cache_root)

    @_one_thread(device)
    def compute() -> dict[str, torch.Tensor]:
        x, y = tensors(sample)
        dev = select_device(device)
        targets = y.to(dev) if lrp_target == "label" else None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        rel = parameter_relevance(
            model.to(dev), x.to(dev), targets, composite=composite, aggregate=aggregate, batch_size=batch_size
        )
        peak = f", peak {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB" if dev.type == "cuda" else ""
        log.info("relevance on %d samples (%s, batches of %s): %.1f s%s", len(x), dev, batch_size,
                 time.perf_counter() - start, peak)  # fmt: skip
        model.cpu()
        return {k: v.cpu() for k, v in rel.items()}

    return cached(folder / "relevance.pt", compute, config=config)


@dataclasses.dataclass
class Setup:
    """One trained dense model (one seed), its data, its relevance and its dense accuracies."""

    cfg: TrainConfig
    data: DataSplits
    state: dict[str, torch.Tensor]
    relevance: dict[str, torch.Tensor]
    relevance_id: str  # names the relevance: model, inference data, its sample, rules
    eval_id: str  # names the evaluation data: dataset split of this seed, plus any shift
    dense_val_accuracy: float
    dense_test_accuracy: float
    model_id: str  # names the trained model: configuration and data files (``model_id``)
    relevance_sample: torch.utils.data.Dataset  # the inference samples relevance was computed on

    def fresh_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """A new copy of the dense model on ``device`` (never downloads weights: the state is loaded)."""
        model = new_model(dataclasses.replace(self.cfg, pretrained=False), self.data)
        return load_state(model, self.state).to(select_device(device)).eval()


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
    mid = model_id(cfg)
    eval_id = mid + (f"-shift-{dict_hash(shift)}" if shift else "")
    rel_config = {"key": eval_id, "samples": pcfg.inference_samples, "seed": cfg.seed, "composite": pcfg.composite}
    relevance = relevance_for(
        model,
        data,
        eval_id,
        samples=pcfg.inference_samples,
        seed=cfg.seed,
        composite=pcfg.composite,
        aggregate=pcfg.aggregate,
        lrp_target=pcfg.lrp_target,
        batch_size=pcfg.lrp_batch_size,
        cache_root=cache_root,
        device=device,
    )
    if pcfg.relevance_control == "shuffled":
        relevance = shuffle_within_layers(relevance, seed=cfg.seed)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    dense = cached(
        cache_dir("dense_eval", dict_hash({"eval": eval_id}), cache_root) / "accuracy.pt",
        _one_thread(device)(
            lambda: {"val": evaluate(model, data.val, device=device), "test": evaluate(model, data.test, device=device)}
        ),
        config={"eval": eval_id},
    )
    variant = {"target": pcfg.lrp_target, "control": pcfg.relevance_control}
    variant = {k: v for k, v in variant.items() if v not in ("predicted", "none")}
    relevance_id = dict_hash({**rel_config, "aggregate": pcfg.aggregate, **variant})
    sample = relevance_sample(data, pcfg.inference_samples, cfg.seed)
    return Setup(cfg, data, state, relevance, relevance_id, eval_id, dense["val"], dense["test"], mid, sample)


def prepare_seeds(
    base: TrainConfig,
    pcfg: PruneConfig,
    seeds: Sequence[int],
    *,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
    workers: int | None = None,
) -> None:
    """``prepare`` every seed's dense model side by side (``parallel.run_tasks``), so that the tasks
    of a sweep that follow, several per seed, find it trained instead of each training it again."""
    tasks = [(dataclasses.replace(base, seed=int(s)), pcfg, str(cache_root), device) for s in seeds]
    run_tasks(_prepare_task, tasks, workers=workers, device=device, desc="dense models")


def _prepare_task(task: tuple) -> None:
    cfg, pcfg, cache_root, device = task
    prepare(cfg, pcfg, cache_root=cache_root, device=device)


def pruned_model(setup: Setup, delta: float, p: float, pcfg: PruneConfig, device: str = "cpu") -> nn.Module:
    """A fresh copy of the dense model pruned one-shot to factor ``p`` by s = (1-δ)·M_norm + δ·R_norm,
    scored and pruned on ``device``."""
    model = setup.fresh_model(device)
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
        "model": setup.model_id,
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
    model = pruned_model(setup, delta, p, pcfg, device)
    _tune(setup, model, pcfg, setup.cfg.seed, device)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _tune(setup: Setup, model: nn.Module, pcfg: PruneConfig, seed: int, device: str) -> None:
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

    @_one_thread(device)
    def compute() -> dict:
        one_shot = _measure(setup, pruned_model(setup, delta, p, pcfg, device), device)
        if not fine_tune:
            return {"one_shot": one_shot, "fine_tuned": None}
        if p == 0:  # nothing pruned, nothing to recover: the dense model itself (module docstring)
            return {"one_shot": one_shot, "fine_tuned": dict(one_shot)}
        state = fine_tuned_state(setup, delta, p, pcfg, device=device, memo=memo)
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
    cache_root: str | Path = REPO_ROOT / "cache",
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

    @_one_thread(device)
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
