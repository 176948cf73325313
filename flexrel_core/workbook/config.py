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

import torch

# The precisions a dense model can be trained in (``TrainConfig.precision``).
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


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
    resize: int | None = None  # side in px an embedded dataset's images are resized to (None: as shipped)
    model: str = "digits_cnn"
    batch_norm: bool = False
    pretrained: bool = False
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    train_samples: int | None = None  # train on a seeded class-stratified share of this many images (None: all)
    # The precision the dense model is trained in (then rounded to float32, in which it is pruned, fine-tuned and
    # evaluated): in float64 another CPU's rounding stays invisible instead of growing into another model.
    precision: str = "float64"

    def __post_init__(self) -> None:
        if self.train_samples is not None and self.train_samples < 1:
            raise ValueError(f"train_samples must be >= 1 or None, got {self.train_samples}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of ``precision``."""
        return PRECISIONS[self.precision]


@dataclasses.dataclass(frozen=True)
class PruneConfig(FromMapping):
    """How each point is scored, pruned and fine-tuned (shared by every sweep of a notebook)."""

    inference_samples: int | None = 256  # inference samples for LRP (None: the whole split)
    composite: str = "epsilon_plus_flat"  # zennit rule set
    aggregate: str = "abs"  # how per-sample relevance is made non-negative
    lrp_target: str = "predicted"  # LRP starts from the predicted class ("predicted") or the true label ("label")
    relevance_control: str = "none"  # "shuffled": relevance permuted within each layer (a control)
    lrp_batch_size: int | None = 256  # inference samples per LRP pass (bounds memory; None: all at once)
    normalize: str = "global"  # min-max of M and R over the whole model ("global") or per layer ("layer")
    scope: str = "global"  # one global threshold, or the same fraction in every layer
    fine_tune_epochs: int = 3  # 0: one-shot only
    fine_tune_lr: float = 1e-3
    fine_tune_batch_size: int = 64
    fine_tune_optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.lrp_target not in LRP_TARGETS:
            raise ValueError(f"lrp_target must be one of {LRP_TARGETS}, got {self.lrp_target!r}")
        if self.relevance_control not in RELEVANCE_CONTROLS:
            raise ValueError(f"relevance_control must be one of {RELEVANCE_CONTROLS}, got {self.relevance_control!r}")


LRP_TARGETS = ("predicted", "label")
RELEVANCE_CONTROLS = ("none", "shuffled")
PARTITIONS = ("iid", "dirichlet", "sorted")


@dataclasses.dataclass(frozen=True)
class FedConfig(FromMapping):
    """Every constant of Figure 3's cooperative-learning scenario, with its default and unit. How the
    model is scored and pruned (δ, normalisation, relevance) comes from ``PruneConfig``, shared with
    the other figures."""

    nodes: int = 5  # learner nodes, each with one shard of the training split
    partition: str = "iid"  # "iid" (stratified), "dirichlet" (class mix ~ Dir(alpha)), "sorted" (label-sorted shards)
    dirichlet_alpha: float = 0.5  # concentration of the non-IID Dirichlet split (smaller = more skewed)
    rounds: int = 5  # FedAvg rounds with the pruned model (masks fixed)
    local_epochs: int = 1  # passes over its shard each node makes per round (an upper bound with local_steps)
    local_steps: int | None = None  # mini-batches each node trains per round (None: local_epochs full passes)
    local_lr: float = 1e-3  # learning rate of local training
    local_batch_size: int = 32  # mini-batch size of local training
    local_optimizer: str = "adam"  # optimizer of local training (fresh each round), see training.OPTIMIZERS
    node_flops: float = 1e9  # sustained FLOP/s of a learner node (a low-power edge CPU)
    bandwidth_bps: float = 1e6  # link bandwidth between server and each node, bit/s (constrained wireless link)
    latency_s: float = 0.05  # one-way latency per transfer, s
    shared_link: bool = False  # True: all nodes' transfers share one link of bandwidth_bps
    half: bool = False  # send float16 values (lossy) instead of the exact float32 bits
    test_every_round: bool = True  # False: test accuracy only at the rounds where validation first meets a target
    stop_when_reached: bool = False  # True: a run ends at the round where validation has met every target

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.nodes < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise ValueError("need nodes >= 1, rounds >= 1 and local_epochs >= 1")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 or None, got {self.local_steps}")
        if self.node_flops <= 0 or self.bandwidth_bps <= 0 or self.latency_s < 0:
            raise ValueError("node_flops and bandwidth_bps must be > 0 and latency_s >= 0")
