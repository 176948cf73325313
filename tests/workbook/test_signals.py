"""Points pruned by any method: Wanda's and Taylor's signals on the relevance sample (cached, the
same class counts), a baseline point equal to pruning by hand, the paper's points keeping their
keys, random points reproducible and fine-tuned once for every condition."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from flexrel_core import data_scores, evaluate, prune, pruning_scores
from flexrel_core.data import class_counts, tensors
from flexrel_core.workbook import points, signals
from flexrel_core.workbook.config import dict_hash
from flexrel_core.workbook.pipeline import prepare


@pytest.fixture(scope="module")
def setups(sweep):
    plain = prepare(sweep.base, sweep.pcfg, cache_root=sweep.cache, device="cpu")
    shifted = prepare(sweep.base, sweep.pcfg, shift=sweep.shift, cache_root=sweep.cache, device="cpu")
    return plain, shifted


def test_signals_are_computed_on_the_relevance_sample_and_cached(sweep, setups, monkeypatch):
    plain, shifted = setups
    for setup in (plain, shifted):
        x, y = tensors(setup.relevance_sample)
        model = setup.fresh_model()
        wanda = signals.signal_for(setup, "wanda", sweep.pcfg, cache_root=sweep.cache, device="cpu")
        taylor = signals.signal_for(setup, "taylor", sweep.pcfg, cache_root=sweep.cache, device="cpu")
        for name, s in data_scores.wanda(model, x).items():
            torch.testing.assert_close(wanda[name], s)
        for name, s in data_scores.taylor(model, x).items():
            torch.testing.assert_close(taylor[name], s)
        config = signals.signal_config(setup, "wanda", sweep.pcfg)
        assert config["class_counts"] == class_counts(setup.relevance_sample, setup.data.num_classes)
        assert config["samples"] == len(x) == sweep.pcfg.inference_samples
    assert set(tensors(shifted.relevance_sample)[1].tolist()) == {0, 1, 2}  # the shifted sample: its classes only
    ids = {signals.signal_id(s, n, sweep.pcfg) for s in setups for n in signals.SIGNAL_NAMES}
    label = signals.signal_id(plain, "taylor", replace(sweep.pcfg, lrp_target="label"))
    assert len(ids | {label}) == 5  # per setup, signal and Taylor target
    monkeypatch.setattr(data_scores, "wanda", lambda *a, **k: pytest.fail("a cached signal was computed again"))
    signals.signal_for(plain, "wanda", sweep.pcfg, cache_root=sweep.cache, device="cpu")
    with pytest.raises(ValueError, match=r"unknown signal 'snip'; expected one of \('wanda', 'taylor'\)"):
        signals.signal_config(plain, "snip", sweep.pcfg)


@pytest.mark.parametrize("method", ["wanda", "taylor", "random", "flexrel_taylor"])
def test_a_baseline_point_equals_pruning_by_hand(sweep, setups, tmp_path, method):
    """Second route: score the dense model directly on the relevance sample, prune, evaluate."""
    setup = setups[0]
    pcfg = replace(sweep.pcfg, fine_tune_epochs=0)
    point = points.evaluate_point(setup, 0.5, 0.8, pcfg, cache_root=tmp_path, device="cpu", method=method)
    model = setup.fresh_model()
    x, _ = tensors(setup.relevance_sample)
    prune(model, pruning_scores(model, x, method=method, delta=0.5, seed=setup.cfg.seed), 0.8)
    assert point["one_shot"]["test"] == evaluate(model, setup.data.test, device="cpu")
    assert point["one_shot"]["sparsity"] == pytest.approx(0.8, abs=1e-3) and point["fine_tuned"] is None


def test_the_papers_points_keep_their_keys_and_others_name_what_they_depend_on(sweep, setups):
    setup = setups[0]
    assert points._mask_config(setup, 0.0, 0.9, sweep.pcfg) == {
        "model": setup.model_id, "delta": 0.0, "p": 0.9, "normalize": "global", "scope": "global", "relevance": None,
    }  # fmt: skip
    flexrel = points._mask_config(setup, 0.5, 0.9, sweep.pcfg)
    assert flexrel == points._mask_config(setup, 0.5, 0.9, sweep.pcfg, "flexrel")
    assert flexrel["relevance"] == setup.relevance_id and "method" not in flexrel
    assert points._mask_config(setup, 0.7, 0.9, sweep.pcfg, "magnitude")["delta"] == 0.0
    wanda = points._mask_config(setup, 0.5, 0.9, sweep.pcfg, "wanda")
    assert wanda["method"] == "wanda" and wanda["delta"] is None
    assert wanda["signal"] == signals.signal_id(setup, "wanda", sweep.pcfg)
    blend = points._mask_config(setup, 0.3, 0.9, sweep.pcfg, "flexrel_taylor")
    assert blend["delta"] == 0.3 and blend["signal"] == signals.signal_id(setup, "taylor", sweep.pcfg)
    rand = points._mask_config(setup, 0.5, 0.9, sweep.pcfg, "random")
    assert rand["seed"] == setup.cfg.seed and rand["signal"] is None
    keys = {dict_hash(points._mask_config(setup, 0.5, 0.9, sweep.pcfg, m)) for m in ("wanda", "taylor", "random")}
    assert len(keys) == 3
    with pytest.raises(ValueError, match="unknown method 'snip'"):
        points._mask_config(setup, 0.5, 0.9, sweep.pcfg, "snip")


def test_random_points_are_reproducible_and_fine_tuned_once_for_both_conditions(sweep, setups, tmp_path, monkeypatch):
    calls = []
    real = points._fine_tune
    monkeypatch.setattr(points, "_fine_tune", lambda *a: calls.append(a[-2]) or real(*a))
    memo: dict = {}
    results = [
        points.evaluate_point(s, 0.5, 0.5, sweep.pcfg, cache_root=tmp_path, device="cpu", memo=memo, method="random")
        for s in setups
    ]
    assert calls == ["random"]  # random scores do not depend on the inference data
    again = points.pruned_model(setups[0], 0.5, 0.5, sweep.pcfg, method="random", cache_root=tmp_path)
    first = points.pruned_model(setups[0], 0.5, 0.5, sweep.pcfg, method="random", cache_root=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), first.state_dict().values(), strict=True))
    assert all(0 <= r["fine_tuned"]["test"] <= 1 for r in results)
