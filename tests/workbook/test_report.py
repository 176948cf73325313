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
