"""Saved figures are byte-stable and readable by others; tables and report sections are plain files."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np

from flexrel_core.workbook.outputs import save_figure


def _figure():
    """A figure with what makes SVGs unstable: clip paths (axes, image), text, a legend."""
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(5, 2.5))
    a.plot(np.linspace(0, 1, 20), rng.random(20), label="accuracy")
    a.fill_between(np.linspace(0, 1, 20), 0, 0.5, alpha=0.3)
    a.legend()
    b.imshow(rng.random((8, 8)))
    b.set_title("mask δ = 0.5")
    return fig


def test_same_numbers_give_the_same_bytes(tmp_path):
    paths = []
    for run in ("first", "second"):
        fig = _figure()
        paths.append(save_figure(fig, tmp_path / run, "fig", formats=("png", "svg", "pdf")))
        plt.close(fig)
    for one, two in zip(*paths, strict=True):
        assert one.name == two.name and one.read_bytes() == two.read_bytes(), one.name
    svg = paths[0][1].read_text()
    assert "<dc:date>" not in svg and "clip-path" in svg


def test_figures_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fig = _figure()
        for path in save_figure(fig, tmp_path, "fig"):
            assert path.stat().st_mode & 0o777 == 0o644, path.name
        plt.close(fig)
    finally:
        os.umask(old)
