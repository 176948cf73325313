"""The method notebook: the tiny network by hand (an independent float64 computation written out
here) against ``flexrel_core.parameter_relevance``, the notebook's own LRP lines (its ``lesson``
cells) against both, conv-as-FC against the library, the additive structure and its staircase
masks, the composite's rules, the short parameters cell, and the notebook under quick."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from quick_outputs import QUICK, figure_and_section

from flexrel_core.models import build_model
from flexrel_core.paper import method, method_views
from flexrel_core.relevance import conv_weight_relevance
from flexrel_core.workbook.paths import REPO_ROOT
from flexrel_core.workbook.profiles import read_profile

NOTEBOOK = REPO_ROOT / "notebooks" / "method.ipynb"

# The tiny network's numbers, worked out on paper: x = (2, 1, 1) gives z = a = (1, 0.75), logits
# (1.0625, 1.5), class 1; z⁺ = 0.2 + 1.2 + 0.1 = 1.5, so R(a) = (0.2, 1.2); ε rule: R(x) = x·(0.2·W1[0] +
# 1.6·W1[1]) = (0.8, 1.3, −0.7); rel(w_jk) = |R(b_j)| + |R(a_k)|.
PAPER = {
    "logits": [1.0625, 1.5],
    "hidden": [0.2, 1.2],
    "input": [0.8, 1.3, -0.7],
    "0.weight": [[1.0, 1.5, 0.9], [2.0, 2.5, 1.9]],
    "2.weight": [[0.2, 1.2], [1.7, 2.7]],
}


def test_tiny_network_by_hand_matches_the_paper_numbers_and_the_library():
    hand = method.hand_lrp()
    forward = hand["forward"].set_index("unit")["value"]
    assert forward[["o0", "o1"]].to_numpy() == pytest.approx(PAPER["logits"])
    # ε = 1e-6 moves the values by about 1e-6 from the paper numbers
    assert hand["hidden_relevance"] == pytest.approx(PAPER["hidden"], abs=1e-5)
    assert hand["input_relevance"] == pytest.approx(PAPER["input"], abs=1e-5)
    for name in ("0.weight", "2.weight"):
        assert hand["rel"][name] == pytest.approx(np.array(PAPER[name]), abs=1e-5)
    library = method.library_relevance(method.tiny_network(), method.tiny_input())
    table = method.relevance_table(hand["rel"], library)
    assert len(table) == 10
    assert table["difference"].abs().max() < 1e-12  # the same rules and ε: equal in float64
    assert table["library"].to_numpy() == pytest.approx(table["by hand"].to_numpy(), abs=1e-12)


def test_bias_keeps_its_share_and_relu_units_that_are_off_get_nothing():
    model = method.tiny_network()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-2.0, 0.0], dtype=torch.float64))  # hidden unit 0 is off
    hand = method.hand_lrp(model)
    assert hand["hidden_relevance"][0] == 0.0
    lib = method.library_relevance(model, method.tiny_input())
    assert method.relevance_table(hand["rel"], lib)["difference"].abs().max() < 1e-12
    # z⁺ keeps the positive bias's share: the hidden units get R(o1)·(1 − b⁺/z⁺)
    start = hand["output_relevance"].sum()
    assert hand["hidden_relevance"].sum() < start


def test_additive_structure():
    hand = method.hand_lrp()
    assert method.additivity_gap(hand["rel"]["0.weight"]) < 1e-12
    assert method.additivity_gap(torch.tensor([[1.0, 2.0], [3.0, 5.0]])) == pytest.approx(1.0)


def test_unfolded_matrix_is_the_convolution():
    model, x = method.conv_network(), method.conv_input()
    t, index = method.unfold_matrix(model[0].weight[0, 0].detach().numpy(), 4, 4)
    assert t.shape == (9, 16) and (index >= 0).sum() == 9 * 4
    assert t @ x.flatten().numpy() == pytest.approx(model[0](x).flatten().detach().numpy())
    padded, index_p = method.unfold_matrix(np.ones((2, 2)), 4, 4, padding=1)
    assert padded.shape == (25, 16) and (index_p == 0).sum() == 16  # w[0, 0] reaches a pixel at 16 positions


def test_conv_kernel_relevance_by_hand_matches_the_library():
    conv = method.hand_conv_relevance()
    library = method.library_relevance(method.conv_network(), method.conv_input(), method.conv_composite())
    table = method.kernel_table(conv, library)
    assert (table["connections"] == 9).all()
    assert table["difference"].abs().max() < 1e-12
    # and the library's own unfolding of the hand-computed relevance maps gives the same
    a_sum = torch.tensor(np.abs(conv["input_relevance"]))[None]
    b_sum = torch.tensor(np.abs(conv["output_relevance"]))[None]
    direct = conv_weight_relevance(method.conv_network()[0], a_sum, b_sum).flatten().numpy()
    assert direct == pytest.approx(table["rel(w) by hand"].to_numpy(), abs=1e-12)


def test_delta_sweep_and_three_decisions_keep_the_right_counts():
    model = method.tiny_network()
    rel = method.library_relevance(model, method.tiny_input())
    sweep = method.delta_sweep(model, rel, [0.0, 0.5, 1.0], 0.5)
    assert len(sweep) == 10 and sweep["M_norm"].between(0, 1).all() and sweep["R_norm"].between(0, 1).all()
    for delta in ("0", "0.5", "1"):
        assert sweep[f"kept(δ={delta})"].sum() == 5
    assert (sweep["kept(δ=0)"] == (sweep["|w|"] >= sweep["|w|"].median())).all()  # δ = 0 keeps the 5 largest |w|
    decisions = method.three_decisions(model, rel, 0.5, 0.5)
    assert (decisions["relevance (δ=1)"] == sweep["kept(δ=1)"]).all()
    # relevance only keeps whole rows here: the predicted output's and the more relevant hidden unit's
    kept = decisions[decisions["relevance (δ=1)"]]
    assert set(zip(kept["layer"], kept["out j"], strict=True)) == {("0.weight", 1), ("2.weight", 1)}


def test_additive_relevance_gives_a_staircase_mask():
    rng = np.random.default_rng(0)
    a, b = rng.random(12), rng.random(8)
    rel = torch.tensor(b[:, None] + a[None, :])
    mask = (rel > np.quantile(rel.numpy(), 0.8)).numpy()
    noise = rng.random((8, 12)) > 0.8
    table = method_views.mask_structure({1.0: mask, 0.0: noise}, rel).set_index("delta")
    assert table.loc[1.0, "staircase agreement"] == 1.0
    assert table.loc[0.0, "staircase agreement"] < 1.0
    assert table.loc[1.0, "rows with a kept weight"] < 1.0


def test_first_of_each_class_picks_those_classes():
    from flexrel_core.data import load_dataset

    data = load_dataset("digits", seed=0, image_size=8)
    x, y = method_views.first_of_each_class(data, [3, 1, 7])
    assert y.tolist() == [3, 1, 7] and x.shape[0] == 3


def lesson_cells() -> list[str]:
    import nbformat

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    return [c.source for c in nb.cells if "lesson" in c.metadata.get("tags", [])]


def run_lesson(**replace: str) -> dict:
    """The notebook's lesson cells executed in order (numpy only), with text replaced as a student would;
    what they display is collected in ``namespace["shown"]``."""
    shown: list[str] = []
    namespace = {"np": np, "display": shown.append, "Markdown": str, "shown": shown}
    for source in lesson_cells():
        for old, new in replace.items():
            source = source.replace(old, new)
        exec(compile(source, "<lesson>", "exec"), namespace)
    return namespace


def test_the_notebooks_lrp_lines_give_the_paper_numbers_and_the_librarys():
    assert len(lesson_cells()) == 4 and sum(len(c.splitlines()) for c in lesson_cells()) <= 40  # a few lines
    ns = run_lesson()  # the conservation cell asserts its own check
    assert ns["o"] == pytest.approx(PAPER["logits"]) and ns["R_a"] == pytest.approx(PAPER["hidden"], abs=1e-5)
    assert ns["R_x"] == pytest.approx(PAPER["input"], abs=1e-5)
    hand = method.hand_lrp()
    assert ns["R_x"] == pytest.approx(hand["input_relevance"], abs=1e-12)
    library = method.library_relevance(method.tiny_network(), method.tiny_input())
    table = method.relevance_table({"0.weight": ns["rel_W1"], "2.weight": ns["rel_W2"]}, library)
    assert table["difference"].abs().max() < 1e-12
    # conservation, printed: the output bias b⁺ keeps 0.1 of the 1.5 the predicted logit starts with
    assert "Σ R(o) = 1.5000 = Σ R(a) 1.4000 + biases of o and ε 0.1000" in ns["shown"]


def test_the_lesson_follows_a_students_numbers():
    """Exercise 3 (b₂ = [0, −0.1]): conservation still holds, the answer's numbers, and the library agrees
    on the network built from the changed numbers."""
    ns = run_lesson(**{"b2 = np.array([0.0, 0.1])": "b2 = np.array([0.0, -0.1])"})
    assert ns["R_a"] == pytest.approx([0.2 / 1.4 * 1.3, 1.2 / 1.4 * 1.3], abs=1e-5) and ns[
        "R_a"
    ].sum() == pytest.approx(1.3)
    model = method.tiny_network(ns["W1"], ns["b1"], ns["W2"], ns["b2"])
    library = method.library_relevance(model, method.tiny_input(ns["x"]))
    table = method.relevance_table({"0.weight": ns["rel_W1"], "2.weight": ns["rel_W2"]}, library)
    assert table["difference"].abs().max() < 1e-12


def test_parameters_cell_is_short_and_the_model_comes_from_the_profile():
    import nbformat

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cell.source.splitlines()) <= 15
    for profile in ("quick", "default", "paper"):
        common = read_profile(profile)["common"]
        settings = method.model_settings(profile, cache_root="elsewhere")
        assert {k: settings[k] for k in method.MODEL_SETTINGS} == {k: common[k] for k in method.MODEL_SETTINGS}
        assert settings["cache_root"] == "elsewhere"


def test_model_settings_name_what_a_profile_lacks(tmp_path, monkeypatch):
    from flexrel_core.workbook import profiles

    monkeypatch.setattr(profiles, "read_profile", lambda name: {"common": {"dataset": "digits"}})
    with pytest.raises(ValueError, match="does not set .*'model'"):
        method.model_settings("quick")


def test_the_composite_gives_flat_first_zplus_to_convolutions_and_epsilon_to_dense_layers():
    rules = method_views.composite_rules(build_model("digits_cnn", image_size=8), "epsilon_plus_flat")
    assert rules["rule"].tolist() == ["Flat", "ZPlus", "ZPlus", "ZPlus", "Epsilon", "Epsilon"]
    assert rules["type"].tolist() == ["Conv2d"] * 4 + ["Linear"] * 2 and rules["what it does"].str.len().min() > 20


@pytest.mark.notebook
def test_method_notebook(run_quick):
    out = run_quick("method")
    tiny = pd.read_csv(out / "method_tiny.csv")
    assert len(tiny) == 10 and tiny["difference"].abs().max() < 1e-12
    conv = pd.read_csv(out / "method_conv.csv")
    assert len(conv) == 4 and conv["difference"].abs().max() < 1e-12
    masks = pd.read_csv(out / "method_masks.csv").set_index("delta")
    assert list(masks.index) == QUICK["method"]["deltas"]
    assert masks.loc[1.0, "staircase agreement"] > 0.99  # relevance only: whole rows and columns
    for name in ("method_heatmaps", "method_inference"):
        assert (out / f"{name}.png").stat().st_size > 1000
    text = figure_and_section(out, "method_masks", "method")
    assert "checked by hand" in text
