"""Configurations as frozen dataclasses, hashed into the path of what they produce.

As in open_lth: a canonical string of the *non-default* fields (plus the class name) is hashed,
so adding a field with a default never changes the hash of an existing configuration and never
silently invalidates cached results. ``tests/test_config.py`` pins the hash of a known config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


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
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[
        :12
    ]


def as_dict(cfg: Any) -> dict:
    """Every field, for writing beside a result."""
    return dataclasses.asdict(cfg)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
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

    @classmethod
    def from_mapping(cls, mapping: dict) -> TrainConfig:
        """The fields found in ``mapping`` (e.g. a notebook's ``globals()`` after its parameters cell)."""
        return cls(**{f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping})
