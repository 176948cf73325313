"""Cached stages shared by every notebook: data, the trained dense model, its relevance.

Each stage is keyed by a hash of its configuration (``config.py``), skips itself when its output
exists, and writes the configuration beside its output (``cache.cached``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from .cache import cached
from .config import TrainConfig, as_dict, config_hash, dict_hash
from .data import DataSplits, load_dataset, tensors
from .masks import load_state
from .models import build_model
from .paths import REPO_ROOT, cache_dir
from .relevance import parameter_relevance
from .training import evaluate, train

log = logging.getLogger(__name__)


def data_for(cfg: TrainConfig, **shift) -> DataSplits:
    """The dataset a training configuration names (``shift``: ``shift_classes``/``shift_weights``)."""
    return load_dataset(cfg.dataset, cfg.data_root, seed=cfg.seed, image_size=cfg.image_size, limit=cfg.limit, **shift)


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
    folder = cache_dir("models", config_hash(cfg), cache_root)

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
    composite: str = "epsilon_plus_flat",
    aggregate: str = "abs",
    batch_size: int | None = 256,
    cache_root: str | Path = REPO_ROOT / "cache",
) -> dict[str, torch.Tensor]:
    """Parameter relevance of ``model`` on (the first ``samples`` of) ``data.inference``, cached
    under ``key`` (a string naming the model state and the inference data, e.g. a config hash)."""
    x, _ = tensors(data.inference, samples)
    config = {"key": key, "samples": len(x), "composite": composite, "aggregate": aggregate}
    folder = cache_dir("relevance", dict_hash(config), cache_root)
    return cached(
        folder / "relevance.pt",
        lambda: parameter_relevance(model.cpu(), x, composite=composite, aggregate=aggregate, batch_size=batch_size),
        config=config,
    )
