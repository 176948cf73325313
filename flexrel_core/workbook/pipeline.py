"""Cached stages every figure shares: data, the trained dense model, its relevance and its dense
accuracy, gathered in a ``Setup`` (``prepare``); the pruned points built on a setup are in ``points``.

Each stage is keyed by a hash of its configuration (``config.py``), skips itself when its output
exists, and writes the configuration beside its output (``cache.cached``).

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
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..data import DataSplits, class_counts, data_fingerprint, draw, load_dataset, tensors
from ..layers import prunable_layers
from ..masks import load_state
from ..models import build_model
from ..parallel import run_tasks
from ..relevance import parameter_relevance
from ..scores import shuffle_within_layers
from ..training import evaluate, select_device, stage_threads, train
from .cache import cached
from .config import PruneConfig, TrainConfig, as_dict, config_hash, dict_hash
from .paths import REPO_ROOT, cache_dir

log = logging.getLogger(__name__)


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


def train_share(data: DataSplits, cfg: TrainConfig) -> torch.utils.data.Dataset:
    """The images the dense model of ``cfg`` is trained on: the whole training split, or with
    ``cfg.train_samples`` a seeded random share of it stratified by class (``data.draw``, seeded by
    ``cfg.seed``): a model trained briefly on a small share is where Figure 3's scenario ``learning``
    starts, so that cooperative learning on the whole split has something to add."""
    return draw(data.train, cfg.train_samples, cfg.seed)


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

    @stage_threads(device)
    def compute() -> dict:
        share = train_share(data, cfg)
        what = (cfg.model, len(share), cfg.dataset, cfg.epochs, cfg.precision)
        log.info("training %s on %d images of %s (%d epochs in %s)", *what)
        torch.manual_seed(cfg.seed)
        model = new_model(cfg, data)
        losses = train(
            model,
            share,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            seed=cfg.seed,
            device=device,
            desc="train dense",
            dtype=cfg.dtype,
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

    @stage_threads(device)
    def compute() -> dict[str, torch.Tensor]:
        # under a process group: this rank's block of the sample, then the sum over ranks (``distributed``)
        part = distributed.shard(sample, distributed.rank(), distributed.world()) if distributed.active() else sample
        dev = select_device(device)
        if distributed.active() and len(part) == 0:  # more ranks than samples: this rank adds nothing
            rel = {name: torch.zeros_like(m.weight) for name, m in prunable_layers(model).items()}
            return {k: v.cpu() for k, v in distributed.all_reduce_sum(rel).items()}
        x, y = tensors(part)
        targets = y.to(dev) if lrp_target == "label" else None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        rel = parameter_relevance(
            model.to(dev), x.to(dev), targets, composite=composite, aggregate=aggregate, batch_size=batch_size
        )
        rel = distributed.all_reduce_sum(rel)
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
        stage_threads(device)(
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
