"""Ablations: every variant on the same seeds and pruning factors, the comparisons the report makes,
the share of FlexRel's gain surviving the shuffled-relevance control, and the notebook under quick."""

from __future__ import annotations

import pandas as pd
import pytest
from quick_outputs import QUICK, figure_and_section

from flexrel_core.paper import ablations


@pytest.fixture(scope="module")
def table(sweep):
    return ablations.compute(
        sweep.base, sweep.pcfg, pruning_factors=[0.9], seeds=[0, 1], delta=0.5, steps=2, cache_root=sweep.cache
    )


def test_every_variant_at_every_point_and_baselines_shared_with_figure_2(table, sweep):
    names = [v.name for v in ablations.variants(2, sweep.pcfg.fine_tune_epochs)]
    assert len(table) == len(names) * 2 and set(table["variant"]) == set(names)
    assert table["fine_tuned_accuracy"].between(0, 1).all() and table["sparsity"].sub(0.9).abs().lt(1e-3).all()
    iterative = table[table["variant"].str.contains("steps")]
    assert iterative["one_shot_accuracy"].isna().all()
    fig2 = sweep.df[(sweep.df["condition"] == "in-distribution") & (sweep.df["p"] == 0.9)]
    for variant, method in (("magnitude", "magnitude"), ("FlexRel", "flexrel")):
        got = table[table["variant"] == variant].set_index("seed")["fine_tuned_accuracy"]
        want = fig2[fig2["method"] == method].set_index("seed")["fine_tuned_accuracy"]
        assert got.to_dict() == want.to_dict()  # the same cached points


def test_differences_and_report(table, sweep):
    diff = ablations.differences(table, 2, sweep.pcfg.fine_tune_epochs)
    assert set(diff["ablation"]) == {"normalisation", "sign", "target", "control", "schedule"}
    assert (diff["n"] == 2).all() and set(diff["schedule"]) == {"one-shot", "fine-tuned"}
    assert not diff[(diff["schedule"] == "one-shot") & (diff["ablation"] == "schedule")].shape[0]  # no one-shot
    text = ablations.report(table, diff, delta=0.5, steps=2, fine_tune_epochs=1)
    for title in ("Normalisation", "Sign of relevance", "LRP target", "Shuffled-relevance control", "Iterative"):
        assert f"### {title}" in text
    assert "FlexRel, shuffled relevance - magnitude" in text and "| p = 0.9 |" in text
    assert ablations.plot(diff).axes


def _control(gain: float, shuffled: float) -> pd.DataFrame:
    rows = []
    for comparison, mean in (("FlexRel - magnitude", gain), ("FlexRel, shuffled relevance - magnitude", shuffled)):
        rows.append({"ablation": "control", "schedule": "fine-tuned", "p": 0.95, "comparison": comparison})
        rows[-1] |= {"n": 5, "mean": mean, "sd": 0.01, "ci_low": mean - 0.01, "ci_high": mean + 0.01}
    return pd.DataFrame(rows)


def test_share_of_the_gain_surviving_the_shuffle():
    assert "p = 0.95: 75 % of 4.0 points" in ablations._shuffle_sentence(_control(0.04, 0.03))
    assert "not ahead of magnitude" in ablations._shuffle_sentence(_control(-0.02, 0.01))


@pytest.mark.notebook
def test_ablations_notebook(run_quick):
    out = run_quick("ablations")
    params, seeds = QUICK["ablations"], QUICK["common"]["seeds"]
    df = pd.read_csv(out / "ablations_accuracy.csv")
    variants = ablations.variants(params["steps"], QUICK["common"]["fine_tune_epochs"])
    assert len(df) == len(variants) * len(params["pruning_factors"]) * len(seeds)
    assert {"ablation", "variant", "method", "p", "seed", "one_shot_accuracy", "fine_tuned_accuracy"} <= set(df.columns)
    diff = pd.read_csv(out / "ablations_differences.csv")
    assert {"ablation", "schedule", "p", "comparison", "n", "mean", "ci_low", "ci_high"} <= set(diff.columns)
    assert diff["mean"].between(-1, 1).all()
    text = figure_and_section(out, "ablations", "ablations")
    assert text.startswith("## Ablations") and "Shuffled-relevance control" in text
