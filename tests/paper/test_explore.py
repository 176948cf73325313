"""The interactive explorer without a kernel: setting a control's value drives its callback, and the
test asserts what the callback produced (``Explorer.state``), against independent recomputations."""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest
import torch
from traitlets import TraitError

from flexrel_core import prune, pruning_scores
from flexrel_core.paper.explore import (
    CONTROLS,
    POINT_COLUMNS,
    Explorer,
    compact_explorer,
    render_static,
    timing,
)
from flexrel_core.paper.explore_report import report
from flexrel_core.paper.explore_session import mask_checksum
from flexrel_core.training import evaluate
from flexrel_core.workbook.config import TrainConfig
from flexrel_core.workbook.pipeline import data_for
from flexrel_core.workbook.profiles import read_profile


@pytest.fixture(scope="module")
def params(quick_cache) -> dict:
    data = read_profile("quick")
    return {**data["common"], **data["explore"], "cache_root": str(quick_cache), "delta": 0.5, "pruning_factor": 0.8}


@pytest.fixture(scope="module")
def explorer(params) -> Explorer:
    return Explorer.from_params(params)


@pytest.fixture()
def ex(explorer) -> Explorer:
    """The shared explorer, back at its starting controls for every test."""
    explorer.update(delta=0.5, pruning_factor=0.8, method="flexrel", scope="global", inference="as trained")
    return explorer


def within_one_weight(sparsity: float, p: float, n: int) -> bool:
    return abs(sparsity - p) <= 1.0 / n + 1e-12


def test_delta_slider_drives_the_callback(ex, params):
    before = dict(ex.state)
    ex.delta.value = 0.9
    s = ex.state
    assert s["delta"] == pytest.approx(0.9)
    assert s["mask_checksum"] != before["mask_checksum"]
    assert within_one_weight(s["sparsity"], 0.8, s["total"])
    # Independent recomputation: prune a deep copy with the same cached relevance, evaluate with training.evaluate.
    model = copy.deepcopy(ex.session.model)
    rel = ex.session.choices["as trained"].relevance
    masks = prune(model, pruning_scores(model, method="flexrel", delta=0.9, relevance=rel), 0.8)
    assert mask_checksum(masks) == s["mask_checksum"]
    test = data_for(TrainConfig.from_mapping(params)).test
    assert s["pruned_accuracy"] == pytest.approx(evaluate(model, test, device="cpu"))
    assert s["dense_accuracy"] == pytest.approx(evaluate(ex.session.model, test, device="cpu"))
    # The working copy is reset, not accumulated: moving back gives back the first masks.
    ex.delta.value = 0.5
    assert ex.state["mask_checksum"] == before["mask_checksum"]
    assert ex.state["pruned_accuracy"] == before["pruned_accuracy"]
    # The dense model itself is never pruned.
    assert all(not hasattr(m, "flexrel_mask") for m in ex.session.model.modules())


def test_pruning_factor_slider(ex):
    ex.pruning_factor.value = 0.3
    s = ex.state
    assert s["pruning_factor"] == pytest.approx(0.3)
    assert within_one_weight(s["sparsity"], 0.3, s["total"])
    assert s["kept"] == s["total"] - round(0.3 * s["total"])
    assert set(s["layer_sparsity"]) == set(ex.masks)
    ex.pruning_factor.value = 0.0
    assert ex.state["sparsity"] == 0.0
    assert ex.state["pruned_accuracy"] == pytest.approx(ex.state["dense_accuracy"])


def test_method_toggle(ex):
    flexrel_at = {d: ex.update(delta=d)["mask_checksum"] for d in (0.0, 1.0)}
    ex.method.value = "magnitude"
    assert ex.delta.disabled  # delta means nothing for magnitude pruning
    assert ex.state["mask_checksum"] == flexrel_at[0.0]
    assert ex.state["effective_delta"] == 0.0
    ex.method.value = "relevance"
    assert ex.state["mask_checksum"] == flexrel_at[1.0]
    ex.method.value = "flexrel"
    assert not ex.delta.disabled


def test_scope_toggle(ex):
    ex.scope.value = "layer"
    s = ex.state
    assert s["scope"] == "layer"
    for name, fraction in s["layer_sparsity"].items():
        assert within_one_weight(fraction, 0.8, ex.masks[name].numel())
    ex.scope.value = "global"
    assert max(ex.state["layer_sparsity"].values()) - min(ex.state["layer_sparsity"].values()) > 0.05


def test_inference_choice(ex):
    assert list(ex.inference.options) == ["as trained", "shifted"]
    as_trained = dict(ex.state)
    ex.inference.value = "shifted"
    s = ex.state
    assert s["inference"] == "shifted"
    assert s["mask_checksum"] != as_trained["mask_checksum"]  # other relevance, other FlexRel mask
    assert set(ex.session.choices["shifted"].y.tolist()) == {0, 1, 2, 3, 4}
    ex.method.value = "magnitude"  # magnitude ignores inference data
    magnitude_shifted = ex.state["mask_checksum"]
    ex.inference.value = "as trained"
    assert ex.state["mask_checksum"] == magnitude_shifted


def test_layer_dropdown_and_views(ex):
    first, last = ex.layer.options[0], ex.layer.options[-1]
    ex.layer.value = first
    checksum = ex.state["layer_mask_checksum"]
    image = ex.out.outputs[0]["data"]["image/png"]
    ex.layer.value = last
    assert ex.state["layer"] == last
    assert ex.state["layer_mask_checksum"] != checksum
    assert ex.out.outputs[0]["data"]["image/png"] != image
    mask_image = ex.figure().axes[1].images[0].get_array()
    assert mask_image.shape == (ex.masks[last].shape[0], ex.masks[last][0].numel())
    html = ex.status.value
    for cls in ("flexrel-dense-accuracy", "flexrel-pruned-accuracy", "flexrel-sparsity"):
        assert f'class="{cls}"' in html
    assert f"{ex.state['pruned_accuracy']:.4f}" in html
    # the checksum tells masks apart for tests, as an attribute: no hash in the text a student reads
    assert f'data-mask="{ex.state["mask_checksum"]}"' in html
    assert ex.state["mask_checksum"] not in re.sub(r"<[^>]*>", "", html)


def empty_share(mask: torch.Tensor, dim: int) -> float:
    """The share of a mask's rows (``dim=1``) or columns (``dim=0``) with no kept weight."""
    return float((mask.reshape(mask.shape[0], -1).sum(dim) == 0).float().mean())


def test_the_pages_exercise_holds(ex):
    """The exercise on the page: at scope "layer", p = 0.9, δ = 1 the shown mask has bands (whole rows and
    columns empty) where δ = 0 leaves few; at scope "global", δ = 1 some layer loses almost every weight."""
    layer = ex.layer.value
    ex.update(scope="layer", pruning_factor=0.9, delta=0.0)
    rows0, cols0 = empty_share(ex.masks[layer], 1), empty_share(ex.masks[layer], 0)
    ex.update(delta=1.0)
    rows1, cols1 = empty_share(ex.masks[layer], 1), empty_share(ex.masks[layer], 0)
    assert rows1 > max(0.25, 3 * rows0) and cols1 > cols0, (rows0, cols0, rows1, cols1)
    ex.update(scope="global")
    assert min(ex.state["layer_sparsity"].values()) < 0.5 and max(ex.state["layer_sparsity"].values()) > 0.99


def test_curve_is_cached_and_consistent(ex):
    s = ex.update(delta=0.3)
    curve = s["curve"]
    assert len(curve) == len(s["curve_deltas"]) == 11
    assert curve[3] == pytest.approx(s["pruned_accuracy"])  # the current point lies on the curve
    ex.delta.value = 0.7
    assert ex.state["curve"] is curve  # same p: no recomputation
    ex.pruning_factor.value = 0.5
    assert ex.state["curve"] is not curve


def test_a_new_p_shows_its_setting_before_computing_its_curve(ex, monkeypatch):
    drawn = []
    render = Explorer._render

    def recording(self):
        render(self)
        drawn.append((self.state["pruning_factor"], self.state["curve"], self.status.value))

    monkeypatch.setattr(Explorer, "_render", recording)
    ex.pruning_factor.value = 0.63  # a p whose curve is not known yet: drawn first without it, then with it
    (p0, first, status0), (p1, second, status1) = drawn
    assert p0 == p1 == pytest.approx(0.63) and first is None and len(second) == 11
    assert f"{ex.state['pruned_accuracy']:.4f}" in status0 and status0 == status1  # the numbers come first
    assert 0 < ex.state["feedback_seconds"] <= ex.state["update_seconds"]
    drawn.clear()
    ex.delta.value = 0.2  # same p: its curve is known, one drawing
    assert len(drawn) == 1 and drawn[0][1] == second


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"delta": 1.5}, ValueError),
        ({"delta": -0.1}, ValueError),
        ({"delta": "0.5"}, TypeError),
        ({"pruning_factor": 0.995}, ValueError),
        ({"pruning_factor": 1.0}, ValueError),
        ({"pruning_factor": -0.2}, ValueError),
        ({"method": "random"}, ValueError),
        ({"scope": "channel"}, ValueError),
        ({"inference": "imagenet"}, ValueError),
        ({"layer": "features.1.weight"}, ValueError),
        ({"gamma": 1}, TypeError),
    ],
)
def test_invalid_values_are_refused(ex, values, error):
    before = dict(ex.state)
    with pytest.raises(error):
        ex.update(**values)
    assert ex.state == before
    assert {k: getattr(ex, k).value for k in CONTROLS} == {k: before[k] for k in CONTROLS}


def test_widgets_refuse_or_clamp(ex):
    with pytest.raises(TraitError):
        ex.method.value = "random"
    with pytest.raises(TraitError):
        ex.inference.value = "imagenet"
    ex.delta.value = 1.5  # a slider clamps to its range: never outside [0, 1]
    assert ex.state["delta"] == 1.0
    ex.pruning_factor.value = 1.0
    assert ex.state["pruning_factor"] == pytest.approx(0.99)


def test_timing_and_static_views(ex, tmp_path):
    times = timing(ex, moves=3)
    assert times["moves"] == 3
    assert 0 < times["delta_update_median_s"] < 5 and 0 < times["p_update_median_s"] < 5
    assert 0 < times["p_feedback_median_s"] <= times["p_update_median_s"]
    assert ex.state["delta"] == 0.5 and ex.state["pruning_factor"] == pytest.approx(0.8)  # restored
    table = render_static(ex, tmp_path, [(0.0, 0.8), (1.0, 0.9)])
    assert ex.state["delta"] == 0.5 and ex.state["inference"] == "as trained"  # restored
    assert len(table) == 4 and set(POINT_COLUMNS) <= set(table.columns)
    for name in table["figure"]:
        assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.svg").stat().st_size > 0
    saved = pd.read_csv(tmp_path / "explore_points.csv")
    assert saved["sparsity"].between(0.79, 0.91).all() and saved["pruned_accuracy"].between(0, 1).all()
    md = report(table, times)
    assert "| shifted | 1.00 | 0.90 |" in md and "0.5 s budget" in md


def test_compact_explorer(params):
    box = compact_explorer(params)

    def controls(widget) -> list[str]:
        if hasattr(widget, "children"):
            return [d for child in widget.children for d in controls(child)]
        return [widget.description] if getattr(widget, "description", "") else []

    assert controls(box) == ["δ (relevance)", "pruning factor p", "method"]
    assert "flexrel-status" in box.children[1]._dom_classes and "flexrel-figure" in box.children[2]._dom_classes


def test_mask_checksum():
    a = {"w": torch.tensor([[True, False], [True, True]])}
    assert mask_checksum(a) == mask_checksum({"w": a["w"].clone()})
    assert mask_checksum(a) != mask_checksum({"w": ~a["w"]})


@pytest.mark.notebook
def test_explore_notebook(run_quick):
    out = run_quick("explore")
    points = read_profile("quick")["explore"]["static_points"]
    table = pd.read_csv(out / "explore_points.csv")
    assert len(table) == 2 * len(points)
    assert set(table["inference"]) == {"as trained", "shifted"}
    assert table["pruned_accuracy"].between(0, 1).all() and table["dense_accuracy"].between(0.5, 1).all()
    for name in table["figure"]:
        assert (out / f"{name}.png").exists() and (out / f"{name}.svg").exists()
    section = (out / "report" / "explore.md").read_text()
    assert section.startswith("## Explorer") and "budget" in section


@pytest.fixture(scope="module")
def tiny_session():
    """A Session on a small untrained CNN with one inference-data choice (no cache, no training)."""
    from nets import small_cnn

    from flexrel_core import parameter_relevance
    from flexrel_core.paper.explore_session import InferenceData, Session

    torch.manual_seed(0)
    model = small_cnn().eval()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,))
    return Session(model, {"as trained": InferenceData(parameter_relevance(model, x), x, y)}, curve_deltas=(0.0, 1.0))


GOOD = dict(delta=0.5, p=0.5, method="flexrel", scope="global", inference="as trained", layer="0.weight")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"inference": "shifted"}, r"unknown inference data 'shifted'; expected one of \['as trained'\]"),
        (
            {"layer": "features.1.weight"},
            r"unknown layer 'features.1.weight'; expected one of .*\['0.weight', '2.weight'",
        ),
        ({"method": "random"}, r"unknown method 'random'; expected one of \['magnitude', 'relevance', 'flexrel'\]"),
        ({"scope": "channel"}, r"scope must be one of \('global', 'layer', 'output'\)"),
    ],
)
def test_session_names_the_valid_choices(tiny_session, change, match):
    with pytest.raises(ValueError, match=match):
        tiny_session.state_at(**{**GOOD, **change})
    state, _ = tiny_session.state_at(**GOOD)  # the session still works afterwards
    assert state["layer"] == "0.weight"


def test_session_lookups_name_the_choices(tiny_session):
    with pytest.raises(ValueError, match=r"unknown inference data 'imagenet'; expected one of \['as trained'\]"):
        tiny_session.accuracy("imagenet")
    with pytest.raises(ValueError, match="unknown inference data 'imagenet'"):
        tiny_session.curve(0.5, "global", "imagenet")
    with pytest.raises(ValueError, match="unknown inference data 'imagenet'"):
        tiny_session.prune_and_evaluate(0.5, 0.5, "flexrel", "global", "imagenet")


def test_the_page_keeps_only_student_text(tmp_path):
    """``make app``'s copy of the notebook: no cell tagged notebook-only or static-views, and no
    developer text in the markdown it keeps (the browser test checks the rendered page too)."""
    import nbformat

    from flexrel_core.paper import app

    nb = nbformat.read(str(app.app_notebook("quick", tmp_path, timing_moves=0)), as_version=4)
    tags = {t for c in nb.cells for t in c.metadata.get("tags", [])}
    assert not tags & set(app.HIDDEN_TAGS)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert not re.findall(r"continuous_update|flexrel_core|\.ipynb|\.csv|results/|make |Reads|Writes|checksum", text)
    assert "## Exercise" in text and "δ to 1" in text


def test_app_overrides_are_checked():
    from flexrel_core.paper import app

    assert app.parse_overrides(["delta=1.0", "shift_classes=[1, 2]"]) == {"delta": 1.0, "shift_classes": [1, 2]}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        app.parse_overrides(["no_such_parameter=1"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        app.parse_overrides(["delta"])


def test_a_stop_ends_the_server_and_what_it_started(tmp_path):
    """``stop_process_tree``: the server and a child in a session of its own (as Voilà's kernels are) both end."""
    import subprocess
    import sys
    import time

    import psutil

    from flexrel_core.paper import app

    child = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    server = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 30
    while not (child.exists() and child.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    kernel = psutil.Process(int(child.read_text()))
    app.stop_process_tree(server, grace_s=5)
    assert server.poll() is not None
    assert not kernel.is_running() or kernel.status() == psutil.STATUS_ZOMBIE
