"""The inference-time signals of the data-aware baselines -- Wanda's |w|·‖X‖₂ and the first-order
Taylor score |w·∂L/∂w| (``data_scores``) -- of a prepared setup's dense model, cached like its
relevance.

They are computed on the very samples relevance is computed on (``Setup.relevance_sample``: the
seeded, class-stratified draw of ``pipeline.relevance_sample``), so FlexRel and the baselines see the
same inference data. The Taylor loss follows the setup's LRP target: cross-entropy against the
predicted class by default (inference data has no labels), against the true label when
``PruneConfig.lrp_target == "label"``. Each signal is cached under its configuration: the model and
evaluation data (``Setup.eval_id``), the sample's size, draw seed and class counts, and the signal's
name (with the target for Taylor), as ``pipeline.relevance_for`` keys relevance.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .. import data_scores
from ..data import class_counts, tensors
from ..training import select_device, stage_threads
from .cache import cached
from .config import PruneConfig, dict_hash
from .paths import REPO_ROOT, cache_dir
from .pipeline import Setup

log = logging.getLogger(__name__)

SIGNAL_NAMES = ("wanda", "taylor")


def signal_config(setup: Setup, name: str, pcfg: PruneConfig) -> dict:
    """What determines signal ``name`` of ``setup``: the model and its evaluation data, the inference
    sample (size, draw seed, class counts) and, for Taylor, a non-default target."""
    if name not in SIGNAL_NAMES:
        raise ValueError(f"unknown signal {name!r}; expected one of {SIGNAL_NAMES}")
    sample = setup.relevance_sample
    config = {
        "key": setup.eval_id,
        "samples": len(sample),
        "draw_seed": setup.cfg.seed if len(sample) < len(setup.data.inference) else None,
        "class_counts": class_counts(sample, setup.data.num_classes),
        "signal": name,
    }
    if name == "taylor" and pcfg.lrp_target != "predicted":
        config["target"] = pcfg.lrp_target
    return config


def signal_id(setup: Setup, name: str, pcfg: PruneConfig) -> str:
    """Names signal ``name`` of ``setup`` in the cache keys of the points pruned by it."""
    return dict_hash(signal_config(setup, name, pcfg))


def signal_for(
    setup: Setup,
    name: str,
    pcfg: PruneConfig,
    *,
    cache_root: str | Path = REPO_ROOT / "cache",
    device: str = "auto",
) -> dict[str, torch.Tensor]:
    """Signal ``name`` (``"wanda"`` or ``"taylor"``) of the setup's dense model on its relevance
    sample, float64 on the CPU, cached (batches of ``pcfg.lrp_batch_size`` samples on ``device``)."""
    config = signal_config(setup, name, pcfg)

    @stage_threads(device)
    def compute() -> dict[str, torch.Tensor]:
        dev = select_device(device)
        x, y = tensors(setup.relevance_sample)
        model = setup.fresh_model(dev)
        start = time.perf_counter()
        if name == "wanda":
            scores = data_scores.wanda(model, x.to(dev), batch_size=pcfg.lrp_batch_size)
        else:
            targets = y.to(dev) if pcfg.lrp_target == "label" else None
            scores = data_scores.taylor(model, x.to(dev), targets, batch_size=pcfg.lrp_batch_size)
        log.info("%s scores on %d samples (%s): %.1f s", name, len(x), dev, time.perf_counter() - start)
        return {k: v.cpu() for k, v in scores.items()}

    return cached(cache_dir("signals", dict_hash(config), cache_root) / "signal.pt", compute, config=config)
