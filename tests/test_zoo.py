"""The torchvision zoo (``flexrel_core.zoo``): every classification builder scored or refused by name,
and the README's list of models is the gallery's result."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flexrel_core import zoo
from flexrel_core.training import torch_threads

README = Path(__file__).resolve().parents[1] / "README.md"
# z+ loses the relevance of outputs with no positive contribution: depthwise convolutions on the small
# maps of 32 px inputs (ShuffleNetV2's 3 x 3 ones on 1 x 1 maps see only their centre tap, and a negative
# one passes nothing back; MobileNetV3's and EfficientNet's lose a few per cent each)
LOSSY = re.compile(r"shufflenet_v2_|mobilenet_v3_|efficientnet_")


@pytest.fixture(scope="module")
def rows() -> list[zoo.Row]:
    with torch_threads(1):
        return zoo.gallery()


def test_one_builder_is_scored_and_its_row_reads_the_same_in_the_readme_block():
    with torch_threads(1):
        row = zoo.score("squeezenet1_1")
    assert row.status == "scored" and row.engine == "fast"
    assert row.difference <= 1e-5 and abs(row.conservation - 1) <= 1e-3
    assert "`squeezenet1_1`" in zoo.readme_block([row])
    assert zoo.skeleton("regnet_x_400mf") is None  # RegNet computes its widths with tensors while it builds


@pytest.mark.slow
def test_the_readme_lists_the_gallery(rows):
    text = README.read_text()
    block = text[text.index(zoo.BEGIN) : text.index(zoo.END) + len(zoo.END)]
    assert block == zoo.readme_block(rows), "run: python -m flexrel_core.zoo --readme README.md"


@pytest.mark.slow
def test_every_builder_is_scored_or_refused_naming_the_operation_and_its_place(rows):
    assert [r.name for r in rows] == zoo.builders()
    by_status = {s: {r.name for r in rows if r.status == s} for s in ("scored", "refused", "not run", "not built")}
    assert sum(map(len, by_status.values())) == len(rows)
    for name in (
        "densenet121",
        "squeezenet1_0",
        "shufflenet_v2_x1_0",
        "googlenet",
        "inception_v3",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "regnet_y_400mf",
    ):
        assert name in by_status["scored"]
    for r in rows:
        if r.status == "refused":
            assert re.search(r"\(node \S+, in the|module \S+ has no LRP rule", r.reason), r
        if r.status in ("not run", "not built"):
            assert r.params > zoo.MAX_PARAMS


@pytest.mark.slow
def test_scored_models_agree_on_both_engines_and_conserve_relevance(rows):
    for r in rows:
        if r.status != "scored":
            continue
        assert r.engine == "fast" and r.difference <= 1e-5, r  # float32: the unit tests compare in float64
        assert 0 <= r.conservation <= 1 + 1e-3, r
        assert LOSSY.match(r.name) or r.conservation >= 0.9, r
