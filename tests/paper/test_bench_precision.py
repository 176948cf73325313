"""``make bench``'s precision section on a small setting: what the workbook's dense-model stage trained in
float64 keeps under torch's kernels for each narrower x86 instruction set this machine can run (the
stand-in for another CPU), measured pair by pair.

Measured on a 2-core AMD EPYC (AVX-512), digits CNN, 3 epochs: AVX-512 vs AVX2 kernels gave the same
float32 weights to the last bit; AVX2 vs no-vector kernels left 77 % of them differing, 6e-7 apart
(relative), with the same validation accuracy. So the test asserts closeness on every pair, and identity
(bar a few weights) on the AVX-512 / AVX2 pair only."""

from __future__ import annotations

import pytest

from flexrel_core.paper.bench_precision import compare_weights, describe, narrower_levels, precision_bench

SMALL = {"dataset": "digits", "image_size": 8, "model": "digits_cnn"}


def test_narrower_levels_walk_down_to_the_default_kernels():
    assert narrower_levels("AVX512") == ["avx2", "default"]
    assert narrower_levels("AVX2") == ["default"]
    assert narrower_levels("DEFAULT") == [] == narrower_levels("NO_AVX")  # e.g. an ARM machine


def test_compare_weights_counts_float32_steps():
    import torch

    a = torch.tensor([1.0, 2.0, -3.0, 4.0])
    b = a.clone()
    b[0] = torch.nextafter(a[0], torch.tensor(2.0))  # one step
    b[1] = torch.nextafter(torch.nextafter(a[1], torch.tensor(3.0)), torch.tensor(3.0))  # two steps
    got = compare_weights(a, b)
    assert got["weights_differing_share"] == 0.5 and got["weights_beyond_one_ulp_share"] == 0.25
    assert got["relative_distance"] == pytest.approx(((b.double() - a.double()).norm() / a.double().norm()).item())


@pytest.mark.skipif(not narrower_levels(), reason="no narrower x86 kernels to compare with")
def test_float64_training_keeps_the_model_under_every_narrower_instruction_sets_kernels():
    report = precision_bench(epochs=3, setting=SMALL)
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows.keys() == {"float32", "float64"}
    for row in rows.values():
        assert row["kernels"][1:] == [level.upper() for level in narrower_levels()]  # really other kernels
        assert len(set(row["kernels"])) == len(row["kernels"]) == len(row["pairs"]) + 1
        assert row["seconds"] > 0 and all(0 <= a <= 1 for a in row["val_accuracy"])
    for pair in rows["float64"]["pairs"]:
        assert pair["relative_distance"] < 1e-5  # every pair: a rounding, not another model
        assert abs(pair["val_accuracy"][0] - pair["val_accuracy"][1]) < 1e-6
        if pair["kernels"] == ["AVX512", "AVX2"]:  # measured identical but for a few weights on this pair only
            assert pair["weights_differing_share"] < 1e-3
    assert report["float64_over_float32_time"] == rows["float64"]["seconds"] / rows["float32"]["seconds"]
    assert "float64 / float32 time" in "\n".join(describe(report))
