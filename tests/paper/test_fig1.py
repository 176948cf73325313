"""Figure 1: the three masks, their overlaps and values on a tiny model, and the notebook under quick."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from nets import ConvFc
from quick_outputs import N_WEIGHTS, QUICK, figure_and_section

from flexrel_core.paper import fig1
from flexrel_core.relevance import parameter_relevance
from flexrel_core.scores import METHODS


def test_mask_comparison_masks_overlaps_and_values():
    model = ConvFc()
    x = torch.randn(16, 1, 4, 4)
    rel = parameter_relevance(model, x)
    res = fig1.compute(model, rel, layer="fc.weight", p=0.6, delta=0.5)
    w, overlap, kept = res["weights"], res["overlap"], res["kept"]
    assert len(w) == 5 * 48 and w[["m_norm", "r_norm"]].apply(lambda c: c.between(0, 1)).all().all()
    assert kept["kept_model"].to_numpy() == pytest.approx([0.4] * 3, abs=1e-2)
    for m in METHODS:  # the layer's share of kept weights agrees with the flags
        assert w[f"kept_{m}"].mean() == pytest.approx(kept.set_index("method").loc[m, "kept_layer"])
    assert overlap["jaccard_layer"].between(0, 1).all()
    assert model.fc.weight.ne(0).all()  # the given model is left unpruned
    same = fig1.compute(model, rel, layer="conv.weight", p=0.6, delta=0.0, max_rows=2, max_cols=5)
    assert len(same["weights"]) == 10 and set(same["weights"]["col"]) == set(range(5))
    row = same["overlap"].set_index(["method_a", "method_b"]).loc[("magnitude", "flexrel")]
    assert row["jaccard_model"] == 1.0  # delta = 0 is magnitude pruning
    with pytest.raises(ValueError, match="unknown layer"):
        fig1.compute(model, rel, layer="nope.weight", p=0.5)
    assert "Spearman" in fig1.report(res)


@pytest.mark.notebook
def test_fig1_notebook(run_quick):
    out = run_quick("fig1")
    params = QUICK["fig1"]
    weights = pd.read_csv(out / "fig1_weights.csv")
    assert {"layer", "row", "col", "m_norm", "r_norm", "score"} <= set(weights.columns)
    assert {f"kept_{m}" for m in METHODS} <= set(weights.columns)
    assert len(weights) == params["max_rows"] * params["max_cols"]
    assert weights[["m_norm", "r_norm", "score"]].apply(lambda c: c.between(0, 1)).all().all()
    overlap = pd.read_csv(out / "fig1_overlap.csv")
    assert (
        len(overlap) == 3 and overlap[["jaccard_layer", "jaccard_model"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    kept = pd.read_csv(out / "fig1_kept.csv")
    assert np.allclose(kept["kept_model"], 1 - params["p"], atol=1 / N_WEIGHTS)
    text = figure_and_section(out, "fig1_masks", "fig1")
    assert params["layer"] in text
