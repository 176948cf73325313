"""Report text helpers."""

from __future__ import annotations

import json
import math

import pandas as pd

from flexrel_core.workbook.report import markdown_table, pct


def test_markdown_table():
    text = markdown_table(pd.DataFrame({"a": [1.23456, 2.0], "b": ["x", "y"]}), ".3g")
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x |", "| 2 | y |"]


def test_pct_is_nan_safe():
    assert pct(0.975) == "97.5 %" and pct(math.nan) == "—" and pct(None) == "—"


def test_report_names_the_commit_and_notebooks_run_elsewhere(tmp_path):
    from flexrel_core.workbook.provenance import describe_commit, git_state
    from flexrel_core.workbook.report import assemble

    folder = tmp_path / "quick"
    (folder / "notebooks").mkdir(parents=True)
    other = {"commit": "0123456789ab", "dirty": ["flexrel_core/relevance.py"]}
    (folder / "notebooks" / "fig1.ipynb").write_text(json.dumps({"metadata": {"flexrel": other}, "cells": []}))
    text = assemble("quick", tmp_path).read_text()
    assert f"at {describe_commit(git_state())}." in text
    assert "`fig1`: commit `0123456789ab` with uncommitted changes" in text and "`flexrel_core/relevance.py`" in text


def test_report_names_the_machine_the_notebooks_recorded(tmp_path):
    from flexrel_core.workbook.provenance import describe_machine, machine
    from flexrel_core.workbook.report import assemble

    here = machine()
    other = {**here, "cpu": "Some Other CPU", "torch_cpu": "AVX2"}
    folder = tmp_path / "quick"
    (folder / "notebooks").mkdir(parents=True)
    for name in ("fig1", "fig2"):
        meta = {"commit": "0123456789ab", "dirty": [], "machine": here}
        (folder / "notebooks" / f"{name}.ipynb").write_text(json.dumps({"metadata": {"flexrel": meta}, "cells": []}))
    text = assemble("quick", tmp_path).read_text()
    assert f"Computed on {describe_machine(here)}." in text
    assert "trained in float64" in text and "*(marginal)* can turn" in text

    meta = {"commit": "0123456789ab", "dirty": [], "machine": other}
    (folder / "notebooks" / "fig2.ipynb").write_text(json.dumps({"metadata": {"flexrel": meta}, "cells": []}))
    text = assemble("quick", tmp_path).read_text()
    assert "Computed on" not in text and "ran on different machines" in text
    assert f"- `fig1`: {describe_machine(here)}" in text and f"- `fig2`: {describe_machine(other)}" in text


def test_sections_show_their_figures_inline_and_quick_says_it_is_a_smoke_test(tmp_path):
    from flexrel_core.workbook.outputs import write_report_section
    from flexrel_core.workbook.report import SMOKE_TESTS, assemble

    for profile in ("quick", "default"):
        folder = tmp_path / profile
        write_report_section(folder, "fig3", "## Figure 3\n\nnumbers")
        write_report_section(folder, "fig1", "## Figure 1\n\nmore numbers")
        for name in ("fig3.png", "fig3_curves.png", "fig1_masks.png", "fig10.png", "fig3.svg"):
            (folder / name).write_bytes(b"png")
        (folder / "notebooks").mkdir()
        for name in ("fig3.ipynb", "method.ipynb", ".fig1.ipynb.1.tmp.ipynb"):
            (folder / "notebooks" / name).write_text(json.dumps({"metadata": {}, "cells": []}))
        text = assemble(profile, tmp_path).read_text()
        assert "## Figure 1\n\n![fig1_masks](fig1_masks.png)\n\nmore numbers" in text
        assert "## Figure 3\n\n![fig3](fig3.png)\n\n![fig3_curves](fig3_curves.png)\n\nnumbers" in text
        assert "fig10" not in text and "fig3.svg" not in text  # another item's figure; only PNGs
        assert "Executed notebooks: [method](notebooks/method.ipynb), [fig3](notebooks/fig3.ipynb)." in text
        assert (SMOKE_TESTS["quick"] in text) == (profile == "quick")
    assert text.index("Figure 1") < text.index("Figure 3")


def test_the_papers_claims_open_the_report_and_every_verdict_and_the_numerics_close_it(tmp_path):
    from flexrel_core.workbook.outputs import write_report_section
    from flexrel_core.workbook.report import assemble

    folder = tmp_path / "default"
    for name, heading in (("claims", "All verdicts"), ("fig2", "Figure 2"), ("checked", "The paper's claims")):
        write_report_section(folder, name, f"## {heading}\n\nnumbers")
    text = assemble("default", tmp_path).read_text()
    order = ["## The paper's claims", "## Figure 2", "## All verdicts", "## Numerics", "## Configuration"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    assert "float64" not in text[: text.index("## The paper's claims")]  # the numerics moved to the end
