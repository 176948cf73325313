"""``make bench``'s precision section on a small setting: the workbook's dense-model stage trained in
float64 gives the same float32 weights under torch's kernels for another instruction set, which is
what lets another CPU rerun the workbook and prune the same models."""

from __future__ import annotations

import pytest
import torch

from flexrel_core.paper.bench_precision import NARROWER, describe, precision_bench

SMALL = {"dataset": "digits", "image_size": 8, "model": "digits_cnn"}


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in NARROWER, reason="no narrower x86 kernels to compare with"
)
def test_float64_training_gives_the_same_model_under_another_instruction_sets_kernels():
    report = precision_bench(epochs=3, setting=SMALL)
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows.keys() == {"float32", "float64"}
    for row in rows.values():
        here, other = row["kernels"]
        assert other == NARROWER[here].upper() != here  # the second run really used other kernels
        assert row["seconds"] > 0 and all(0 <= a <= 1 for a in row["val_accuracy"])
    assert rows["float64"]["relative_distance"] < 1e-6  # at most a last-bit rounding of a few weights
    assert rows["float64"]["weights_differing_share"] < 1e-3
    assert report["float64_over_float32_time"] == rows["float64"]["seconds"] / rows["float32"]["seconds"]
    assert "float64 / float32 time" in "\n".join(describe(report))
