"""Configurations as frozen dataclasses, hashed into the path of what they produce.

As in open_lth: a canonical string of the *non-default* fields (plus the class name) is hashed, so
a configuration's hash does not depend on fields it leaves at their defaults
(``tests/workbook/test_config.py`` pins the hash of a known configuration). A changed default
would therefore go unnoticed by that hash: this module's source is part of the code hash of every
cached stage (``provenance.STAGE_CODE``), so editing it recomputes what depends on it. Every
configuration of the workbook lives here: the dense model (``TrainConfig``), how points are
scored, pruned and fine-tuned (``PruneConfig``) and Figure 3's cooperative-learning scenario
(``FedConfig``); all read themselves from a notebook's parameters with ``from_mapping``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Self


def canonical(cfg: Any) -> str:
    """``ClassName{json of the fields that differ from their defaults, keys sorted}``."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    changed = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if value != default:
            changed[f.name] = canonical(value) if dataclasses.is_dataclass(value) else value
    return type(cfg).__name__ + json.dumps(changed, sort_keys=True, separators=(",", ":"), default=list)


def config_hash(cfg: Any) -> str:
    """12 hex digits of sha256 over ``canonical(cfg)``."""
    return hashlib.sha256(canonical(cfg).encode()).hexdigest()[:12]


def dict_hash(config: dict) -> str:
    """12 hex digits of sha256 over a plain dict of literals (stages whose config is no dataclass)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def as_dict(cfg: Any) -> dict:
    """Every field, for writing beside a result."""
    return dataclasses.asdict(cfg)


class FromMapping:
    """``from_mapping``: a configuration from the fields found in a mapping (e.g. a notebook's
    ``globals()`` after its parameters cell); other names in the mapping are ignored."""

    @classmethod
    def from_mapping(cls, mapping: dict) -> Self:
        return cls(**{f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping})


@dataclasses.dataclass(frozen=True)
class TrainConfig(FromMapping):
    """Everything that determines a trained dense model (the base of every experiment)."""

    dataset: str = "digits"
    data_root: str | None = None
    limit: int | None = None
    image_size: int = 224
    model: str = "digits_cnn"
    batch_norm: bool = False
    pretrained: bool = False
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PruneConfig(FromMapping):
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


PARTITIONS = ("iid", "dirichlet", "sorted")


@dataclasses.dataclass(frozen=True)
class FedConfig(FromMapping):
    """Every constant of Figure 3's cooperative-learning scenario, with its default and unit."""

    nodes: int = 5  # learner nodes, each with one shard of the training split
    partition: str = "iid"  # "iid" (stratified), "dirichlet" (class mix ~ Dir(alpha)), "sorted" (label-sorted shards)
    dirichlet_alpha: float = 0.5  # concentration of the non-IID Dirichlet split (smaller = more skewed)
    warmup_rounds: int = 3  # dense FedAvg rounds before pruning
    rounds: int = 20  # FedAvg rounds with the pruned model (masks fixed)
    local_epochs: int = 1  # epochs each node trains on its shard per round
    local_lr: float = 5e-3  # learning rate of local training
    local_batch_size: int = 32  # mini-batch size of local training
    local_optimizer: str = "adam"  # optimizer of local training (fresh each round), see training.OPTIMIZERS
    node_flops: float = 1e9  # sustained FLOP/s of a learner node (a low-power edge CPU)
    bandwidth_bps: float = 1e6  # link bandwidth between server and each node, bit/s (constrained wireless link)
    latency_s: float = 0.05  # one-way latency per transfer, s
    shared_link: bool = False  # True: all nodes' transfers share one link of bandwidth_bps
    half: bool = False  # send float16 values (lossy) instead of the exact float32 bits
    delta: float = 0.5  # FlexRel weight of relevance
    inference_samples: int = 128  # inference-split samples for relevance
    composite: str = "epsilon_plus_flat"  # zennit LRP rule set
    aggregate: str = "abs"  # how per-sample relevance is made non-negative
    normalize: str = "layer"  # min-max normalisation of scores, "layer" or "global"
    scope: str = "global"  # one global pruning threshold or the same fraction per layer
    seed: int = 0  # seeds shards, initialisation and local training

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.nodes < 1 or self.rounds < 1 or self.warmup_rounds < 0 or self.local_epochs < 1:
            raise ValueError("need nodes >= 1, rounds >= 1, warmup_rounds >= 0 and local_epochs >= 1")
        if self.node_flops <= 0 or self.bandwidth_bps <= 0 or self.latency_s < 0:
            raise ValueError("node_flops and bandwidth_bps must be > 0 and latency_s >= 0")
