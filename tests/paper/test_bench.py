"""``make bench``'s scoring rows: every case timed and measured, both engines' ratios, on a residual network
as on a chain (the bench's ResNet-18 row is this row at full size)."""

from __future__ import annotations

import torch

from flexrel_core import build_model
from flexrel_core.paper import bench
from flexrel_core.paper.bench import ENGINES, TARGETS, bench_model, format_table
from flexrel_core.training import torch_threads


def test_bench_model_row_on_a_residual_network(monkeypatch):
    """(Memory is sampled by a thread every millisecond, slow on a busy machine: replaced by one run here; one
    torch thread, as a tiny model on two busy cores waits on its second thread.)"""
    monkeypatch.setattr(bench, "peak_rss_bytes", lambda fn, device: (fn(), 1)[1])
    model, x = build_model("resnet_slim", batch_norm=True), torch.randn(4, 1, 16, 16)
    with torch_threads(1):
        row = bench_model("resnet_slim", model, x, torch.device("cpu"), repeats=1)
    for case in ("plain", "train_step", "lrp_zennit", "lrp_fast", "scoring_zennit", "scoring_fast"):
        assert row[f"{case}_seconds"] > 0 and row[f"{case}_memory_bytes"] >= 0
    for e in ENGINES:
        assert row[f"{e}_scoring_over_plain_time"] == row[f"scoring_{e}_seconds"] / row["plain_seconds"]
    assert row["meets"].keys() == TARGETS.keys()
    assert "resnet_slim" in format_table([row])


def test_zoo_rows_time_torchvision_builders_side_by_side(monkeypatch):
    """The zoo section's row (``make bench`` runs ResNet-18 and MobileNetV2 at 64 px, batch 8): here
    MobileNetV2 at 32 px, batch 2, one repeat."""
    monkeypatch.setattr(bench, "peak_rss_bytes", lambda fn, device: (fn(), 1)[1])
    with torch_threads(1):
        (row,) = bench.zoo_benchmarks(torch.device("cpu"), repeats=1, size=32, batch=2, models=("mobilenet_v2",))
    assert row["model"] == "mobilenet_v2@32px" and row["input"] == [2, 3, 32, 32]
    assert row["fast_scoring_over_plain_time"] == row["scoring_fast_seconds"] / row["plain_seconds"]
    assert row["meets"].keys() == TARGETS.keys()
    assert "mobilenet_v2@32px" in format_table([row])
    assert bench.ZOO_MODELS == ("resnet18", "mobilenet_v2")
