"""Cached stages: relevance on the shifted inference split, reruns load instead of recomputing, and a
magnitude point fine-tuned once serves both conditions."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from flexrel_core.data import tensors
from flexrel_core.paper import fig2
from flexrel_core.relevance import parameter_relevance
from flexrel_core.workbook import pipeline, points
from flexrel_core.workbook.pipeline import prepare


def test_shifted_relevance_uses_shifted_inference_split(sweep):
    setup = prepare(sweep.base, sweep.pcfg, shift=sweep.shift, cache_root=sweep.cache, device="cpu")
    x, y = tensors(setup.relevance_sample)
    assert set(y.tolist()) == {0, 1, 2}
    expected = parameter_relevance(setup.fresh_model(), x, batch_size=256)
    for name, rel in setup.relevance.items():
        torch.testing.assert_close(rel, expected[name])
    assert set(tensors(setup.data.test)[1].tolist()) == {0, 1, 2}
    plain = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    assert plain.relevance_id != setup.relevance_id and plain.eval_id != setup.eval_id


def test_rerun_is_cached_and_identical(sweep, monkeypatch):
    def computed(*args, **kwargs):
        raise AssertionError("a rerun with nothing changed computed a stage again")

    for module in (pipeline, points):
        for name in ("train", "evaluate", "parameter_relevance", "_fine_tune"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, computed)
    again = fig2.compute(
        sweep.base,
        sweep.pcfg,
        pruning_factors=sweep.grid,
        seeds=[0, 1],
        delta=0.5,
        shift=sweep.shift,
        cache_root=sweep.cache,
        device="cpu",
        workers=1,  # in this process, where the stages are replaced
    )
    pd.testing.assert_frame_equal(sweep.df, again)


def test_magnitude_fine_tuned_once_for_both_conditions(sweep, tmp_path, monkeypatch):
    calls = []
    real = points._fine_tune
    monkeypatch.setattr(points, "_fine_tune", lambda setup, delta, *a: calls.append(delta) or real(setup, delta, *a))
    fig2.compute(
        sweep.base,
        sweep.pcfg,
        pruning_factors=[0.5],
        seeds=[0],
        shift=sweep.shift,
        cache_root=tmp_path,
        device="cpu",
        workers=1,
    )
    # in-distribution: magnitude, relevance, FlexRel; shifted: relevance and FlexRel only (new relevance)
    assert sorted(calls) == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_iterative_steps_remove_the_same_fraction_of_the_remaining_weights():
    assert points.iterative_steps(0.9, 1) == [0.9]
    steps = points.iterative_steps(0.96, 2)
    assert steps[0] == pytest.approx(0.8) and steps[1] == 0.96  # 1 - sqrt(0.04), then the target


def test_iterative_point_reaches_the_pruning_factor_and_rescores(sweep, monkeypatch, tmp_path):
    setup = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    calls = []
    real = points.parameter_relevance
    monkeypatch.setattr(points, "parameter_relevance", lambda m, *a, **k: calls.append(1) or real(m, *a, **k))
    point = points.iterative_point(setup, 0.5, 0.9, sweep.pcfg, 2, cache_root=tmp_path, device="cpu")
    assert len(calls) == 2  # relevance recomputed on the pruned model at every step
    assert point["sparsity"] == pytest.approx(0.9, abs=1e-3) and 0 <= point["test"] <= 1
    again = points.iterative_point(setup, 0.5, 0.9, sweep.pcfg, 2, cache_root=tmp_path, device="cpu")
    assert again == point and len(calls) == 2  # cached


def test_relevance_variants_have_their_own_identity(sweep):
    plain = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    label = prepare(sweep.base, replace(sweep.pcfg, lrp_target="label"), cache_root=sweep.cache, device="cpu")
    shuffled = prepare(sweep.base, replace(sweep.pcfg, relevance_control="shuffled"), cache_root=sweep.cache)
    assert len({plain.relevance_id, label.relevance_id, shuffled.relevance_id}) == 3
    x, y = tensors(plain.relevance_sample)
    expected = parameter_relevance(plain.fresh_model(), x, y)  # from the true labels
    for name, rel in label.relevance.items():
        torch.testing.assert_close(rel, expected[name])
    for name, rel in shuffled.relevance.items():
        assert torch.equal(torch.sort(rel.flatten()).values, torch.sort(plain.relevance[name].flatten()).values)


def test_a_longer_fine_tuning_run_gives_the_shorter_budgets_bit_for_bit(sweep, tmp_path, monkeypatch):
    """One run of 3 epochs leaves the state after epoch 1 in the memo: exactly the 1-epoch point, so the
    map's budgets fine-tune each point once."""
    setup = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    three, one = replace(sweep.pcfg, fine_tune_epochs=3), replace(sweep.pcfg, fine_tune_epochs=1)
    memo: dict = {}
    long_run = points.fine_tuned_state(setup, 0.5, 0.9, three, device="cpu", memo=memo)
    monkeypatch.setattr(points, "_fine_tune", lambda *a: pytest.fail("the 1-epoch state was fine-tuned again"))
    from_memo = points.fine_tuned_state(setup, 0.5, 0.9, one, device="cpu", memo=memo)
    monkeypatch.undo()
    alone = points.fine_tuned_state(setup, 0.5, 0.9, one, device="cpu")
    assert all(torch.equal(from_memo[k], alone[k]) for k in alone)
    assert not all(torch.equal(long_run[k], alone[k]) for k in alone)
