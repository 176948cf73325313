"""Configurations: hashes pinned, defaults never change a hash, ``from_mapping`` reads a notebook's globals."""

from __future__ import annotations

import pytest
import torch

from flexrel_core.workbook.config import FedConfig, PruneConfig, TrainConfig, canonical, config_hash


def test_config_hash_is_pinned_and_ignores_defaults():
    # Pinned: changing how configurations hash silently orphans every cached model.
    assert canonical(TrainConfig()) == "TrainConfig{}"
    assert config_hash(TrainConfig()) == "f0f595f751f3"
    assert config_hash(TrainConfig(epochs=12)) == "efdbe672927c"
    assert config_hash(TrainConfig(epochs=30)) == config_hash(TrainConfig())
    assert TrainConfig.from_mapping({"epochs": 12, "unrelated": 1}) == TrainConfig(epochs=12)


def test_every_configuration_reads_its_fields_from_a_mapping():
    params = {"epochs": 12, "fine_tune_epochs": 2, "nodes": 3, "unrelated": 1}
    assert TrainConfig.from_mapping(params) == TrainConfig(epochs=12)
    assert PruneConfig.from_mapping(params) == PruneConfig(fine_tune_epochs=2)
    assert FedConfig.from_mapping(params) == FedConfig(nodes=3)


def test_prune_config_refuses_unknown_variants():
    with pytest.raises(ValueError, match="lrp_target"):
        PruneConfig(lrp_target="oracle")
    with pytest.raises(ValueError, match="relevance_control"):
        PruneConfig(relevance_control="random")


def test_fed_config_refuses_bad_values():
    with pytest.raises(ValueError, match="partition"):
        FedConfig(partition="weird")
    with pytest.raises(ValueError):
        FedConfig(bandwidth_bps=0)
    with pytest.raises(ValueError):
        FedConfig(rounds=0)
    with pytest.raises(ValueError, match="local_steps"):
        FedConfig(local_steps=0)


def test_train_config_trains_in_float64_unless_told_and_refuses_other_precisions():
    assert TrainConfig().dtype == torch.float64
    assert TrainConfig(precision="float32").dtype == torch.float32
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'float64'\], got 'bfloat16'"):
        TrainConfig(precision="bfloat16")
