"""Cached stages: relevance on the shifted inference split, reruns load instead of recomputing, and a
magnitude point fine-tuned once serves both conditions."""

from __future__ import annotations

import time

import pandas as pd
import torch

from flexrel_core.data import tensors
from flexrel_core.paper import fig2
from flexrel_core.relevance import parameter_relevance
from flexrel_core.workbook import pipeline
from flexrel_core.workbook.pipeline import prepare


def test_shifted_relevance_uses_shifted_inference_split(sweep):
    setup = prepare(sweep.base, sweep.pcfg, shift=sweep.shift, cache_root=sweep.cache, device="cpu")
    x, y = tensors(setup.data.inference, sweep.pcfg.inference_samples)
    assert set(y.tolist()) == {0, 1, 2}
    expected = parameter_relevance(setup.fresh_model(), x, batch_size=256)
    for name, rel in setup.relevance.items():
        torch.testing.assert_close(rel, expected[name])
    assert set(tensors(setup.data.test)[1].tolist()) == {0, 1, 2}
    plain = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    assert plain.relevance_id != setup.relevance_id and plain.eval_id != setup.eval_id


def test_rerun_is_cached_and_identical(sweep):
    df, first = sweep.df, sweep.seconds
    start = time.perf_counter()
    again = fig2.compute(
        sweep.base,
        sweep.pcfg,
        pruning_factors=sweep.grid,
        seeds=[0, 1],
        delta=0.5,
        shift=sweep.shift,
        cache_root=sweep.cache,
        device="cpu",
    )
    assert time.perf_counter() - start < first / 3
    pd.testing.assert_frame_equal(df, again)


def test_magnitude_fine_tuned_once_for_both_conditions(sweep, tmp_path, monkeypatch):
    calls = []
    real = pipeline._fine_tune
    monkeypatch.setattr(pipeline, "_fine_tune", lambda setup, delta, *a: calls.append(delta) or real(setup, delta, *a))
    fig2.compute(
        sweep.base, sweep.pcfg, pruning_factors=[0.5], seeds=[0], shift=sweep.shift, cache_root=tmp_path, device="cpu"
    )
    # in-distribution: magnitude, relevance, FlexRel; shifted: relevance and FlexRel only (new relevance)
    assert sorted(calls) == [0.0, 0.5, 0.5, 1.0, 1.0]
