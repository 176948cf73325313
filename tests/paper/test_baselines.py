"""Against other data-aware scores: FlexRel − each baseline from hand-made tables against numbers
worked out by hand (t-intervals by scipy), the verdict of each cell and whether it is robust,
refusals, and the notebook under quick."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from quick_outputs import QUICK, figure_and_section
from scipy import stats

from flexrel_core.paper import baselines as bl
from flexrel_core.workbook.config import PruneConfig, TrainConfig

GRID = [0.0, 0.9, 0.95]
DENSE = 0.9
# one-shot and fine-tuned accuracy per method at GRID (seed 0); seed s adds NOISE[s] to FlexRel at 0.95
ONE_SHOT = {"flexrel": [0.9, 0.89, 0.6], "wanda": [0.9, 0.85, 0.5], "random": [0.9, 0.1, 0.1]}
TUNED = {"flexrel": [0.9, 0.9, 0.85], "wanda": [0.9, 0.9, 0.86], "random": [0.9, 0.5, 0.3]}
NOISE = [0.0, 0.01, 0.02]


def _table() -> pd.DataFrame:
    """The map-shaped rows of one setting, one fine-tuning budget (1 epoch)."""
    rows = []
    for method in ONE_SHOT:
        for i, p in enumerate(GRID):
            for seed, noise in enumerate(NOISE):
                extra = noise if (method == "flexrel" and p == 0.95) else 0.0
                rows.append(
                    {"setting": "A", "budget": 1, "condition": "in-distribution", "method": method, "p": p}
                    | {"seed": seed, "delta": 0.5, "dense_accuracy": DENSE}
                    | {"one_shot_accuracy": ONE_SHOT[method][i] + extra}
                    | {"fine_tuned_accuracy": TUNED[method][i] + extra}
                )
    return pd.DataFrame(rows)


def test_differences_are_flexrel_minus_each_baseline_with_t_intervals():
    diff = bl.differences(_table())
    assert set(diff["baseline"]) == {"wanda", "random"} and set(diff["schedule"]) == {"one-shot", "fine-tuned 1 epoch"}
    row = diff[(diff["schedule"] == "one-shot") & (diff["baseline"] == "wanda") & (diff["p"] == 0.95)].iloc[0]
    values = np.array([0.1, 0.11, 0.12])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert row["mean"] == pytest.approx(0.11) and row["ci_high"] - row["mean"] == pytest.approx(half)
    # clear of 0 by far more than its half-width, but on 3 seeds: fewer than the 5 pairs a robust verdict needs
    assert row["supports"] == "higher" and row["robust"] == "marginal"
    tuned = diff[(diff["schedule"] == "fine-tuned 1 epoch") & (diff["baseline"] == "wanda") & (diff["p"] == 0.95)]
    assert tuned.iloc[0]["mean"] == pytest.approx(0.0) and tuned.iloc[0]["supports"] == "no detectable difference"
    assert list(bl.at_knees(diff, {"A": [0.95]})["p"].unique()) == [0.95]


def test_reach_effects_and_verdicts_by_hand():
    df = _table()
    diff = bl.differences(df)
    reach = bl.reach_effects(df, threshold=2.0).set_index(["schedule", "baseline"])
    # one-shot: FlexRel stays within 2 points at 0.9 (89 %), Wanda leaves at 0.9 (85 %), random too: reach 0
    one = reach.loc[("one-shot", "wanda")]
    assert (one.reach_flexrel, one.reach_baseline, one.gain, one.supports) == (0.9, 0.0, pytest.approx(0.9), "higher")
    tuned = reach.loc[("fine-tuned 1 epoch", "wanda")]
    assert (tuned.reach_flexrel, tuned.reach_baseline, tuned.supports) == (0.9, 0.9, "no detectable difference")
    judged = bl.verdicts(bl.reach_effects(df), diff, {"A": [0.9, 0.95]}).set_index(["schedule", "baseline"])
    assert judged.loc[("one-shot", "wanda"), "verdict"] == "FlexRel better"
    one = judged.loc[("one-shot", "wanda")]
    assert one["basis"] == "reach" and one["robust"] == "marginal"  # 3 seeds
    # fine-tuned vs Wanda: same reach, FlexRel 1 point below at 0.95 on seed 0, level on seed 1, 1 above on seed 2
    assert judged.loc[("fine-tuned 1 epoch", "wanda"), "verdict"] == "no detectable difference"
    assert judged.loc[("fine-tuned 1 epoch", "random"), "verdict"] == "FlexRel better"
    assert judged.loc[("fine-tuned 1 epoch", "random"), "basis"] == "reach"
    assert "p = 0.95: +56.0 [" in judged.loc[("fine-tuned 1 epoch", "random"), "knee"]
    # Wanda 6 points below FlexRel at 0.95 after fine-tuning, both out of the band there: the knee decides
    lower = (df["method"] == "wanda") & (df["p"] == 0.95)
    df.loc[lower, "fine_tuned_accuracy"] = 0.8
    judged = bl.verdicts(bl.reach_effects(df), bl.differences(df), {"A": [0.95]}).set_index(["schedule", "baseline"])
    tuned = judged.loc[("fine-tuned 1 epoch", "wanda")]
    assert (tuned["verdict"], tuned["basis"], tuned["robust"]) == ("FlexRel better", "accuracy at the knee", "marginal")


@pytest.mark.parametrize(
    ("directions", "expected"),
    [
        (["higher", "lower"], "FlexRel better"),
        (["lower", "higher"], "FlexRel worse"),
        (["no detectable difference", "higher", "no detectable difference"], "FlexRel better"),
        (["no detectable difference", "lower"], "FlexRel worse"),
        (["undetermined", "higher", "lower"], "mixed"),
        (["no detectable difference"], "no detectable difference"),
        (["undetermined", "undetermined"], "undetermined"),
    ],
)
def test_verdict(directions, expected):
    assert bl.verdict(directions) == expected


def test_report_and_plot():
    df = _table()
    diff = bl.differences(df)
    judged = bl.verdicts(bl.reach_effects(df), diff, {"A": [0.9, 0.95]})
    text = bl.report(df, judged, delta=0.5, threshold=2.0, fine_tune_epochs=1)
    assert text.startswith("## Against other data-aware scores") and "3 seeds" in text
    assert "| A | one-shot | in-distribution | Wanda | +0.900 [+0.900, +0.900] |" in text
    # 3 seeds: fewer than the 5 pairs a robust verdict needs, so the headline rests on none
    assert "**Against Wanda**" in text and "FlexRel better (marginal)" in text
    assert "**Robust verdicts only**: none." in text
    robust = bl.report(df, judged.assign(robust="robust"), delta=0.5, threshold=2.0, fine_tune_epochs=1)
    assert "**Robust verdicts only**: FlexRel better than Wanda (A, one-shot" in robust
    fig = bl.plot(df, diff)
    assert len(fig.axes) == 4


def test_refusals():
    pcfg = PruneConfig(fine_tune_epochs=1)
    setting = {"name": "A", "pruning_factors": [0.9], "knee": [0.9]}
    with pytest.raises(ValueError, match="without 'flexrel'"):
        bl.compute(TrainConfig(), pcfg, settings=[setting], baselines=["flexrel", "wanda"], seeds=[0], delta=0.5)
    with pytest.raises(ValueError, match="unknown method 'snip'"):
        bl.compute(TrainConfig(), pcfg, settings=[setting], baselines=["snip"], seeds=[0], delta=0.5)
    with pytest.raises(ValueError, match="fine_tune_epochs must be >= 1"):
        bl.compute(TrainConfig(), PruneConfig(fine_tune_epochs=0), settings=[setting], seeds=[0], delta=0.5)
    with pytest.raises(ValueError, match=r"one_shot_only \['random'\] are not among the baselines"):
        bl.compute(TrainConfig(), pcfg, settings=[setting], baselines=["wanda"], one_shot_only=["random"], seeds=[0],
                   delta=0.5)  # fmt: skip
    with pytest.raises(ValueError, match=r"settings \['A'\] give budgets"):
        bl.compute(TrainConfig(), pcfg, settings=[setting | {"budgets": [2]}], seeds=[0], delta=0.5)


@pytest.mark.notebook
def test_baselines_notebook(run_quick):
    out = run_quick("baselines")
    params, seeds = QUICK["baselines"], QUICK["common"]["seeds"]
    df = pd.read_csv(out / "baselines_accuracy.csv")
    methods = 1 + len(params["baselines"])
    points = sum(len(s["pruning_factors"]) + len(s.get("one_shot_factors", [])) for s in params["settings"])
    assert len(df) == points * methods * len(seeds)
    assert set(df["method"]) == {"flexrel", *params["baselines"]} and set(df["condition"]) == {"in-distribution"}
    assert df[["one_shot_accuracy", "fine_tuned_accuracy", "dense_accuracy"]].stack().dropna().between(0, 1).all()
    untuned = df["method"].isin(params["one_shot_only"])
    assert (df.loc[untuned, "budget"] == 0).all() and df.loc[untuned, "fine_tuned_accuracy"].isna().all()
    assert df.loc[~untuned & (df["budget"] > 0), "fine_tuned_accuracy"].notna().all()
    judged = pd.read_csv(out / "baselines_verdicts.csv")
    cells = len(params["settings"]) * (2 * len(params["baselines"]) - len(params["one_shot_only"]))
    assert len(judged) == cells  # settings x schedules x baselines, the one-shot-only ones one-shot only
    assert set(judged.loc[judged["schedule"] != "one-shot", "baseline"]).isdisjoint(params["one_shot_only"])
    assert judged["verdict"].isin(list(bl.WORDS.values())).all()
    assert judged["robust"].isin(["robust", "marginal", "undetermined"]).all()
    diff = pd.read_csv(out / "baselines_differences.csv")
    assert diff["mean"].between(-1, 1).all() and set(diff["baseline"]) == set(params["baselines"])
    text = figure_and_section(out, "baselines", "baselines")
    assert text.startswith("## Against other data-aware scores") and "**Samples**" in text


def test_the_papers_methods_on_figure_2s_setting_read_figure_2s_points(sweep, monkeypatch):
    from flexrel_core.workbook import pipeline, points

    def refuse(*args, **kwargs):
        raise AssertionError("Figure 2's points are cached: nothing may be trained or fine-tuned")

    monkeypatch.setattr(pipeline, "train", refuse)
    monkeypatch.setattr(points, "_fine_tune", refuse)
    setting = {"name": "fig2", "pruning_factors": sweep.grid, "knee": [0.9]}
    df = bl.compute(
        sweep.base, sweep.pcfg, settings=[setting], baselines=["magnitude", "relevance"], seeds=[0, 1], delta=0.5,
        cache_root=sweep.cache, device="cpu", threads=1, workers=1,
    )  # fmt: skip
    keys = ["method", "p", "seed"]
    ours = df.set_index(keys)[["one_shot_accuracy", "fine_tuned_accuracy"]].sort_index()
    theirs = sweep.df[sweep.df["condition"] == "in-distribution"].set_index(keys)
    pd.testing.assert_frame_equal(ours, theirs[["one_shot_accuracy", "fine_tuned_accuracy"]].sort_index())
