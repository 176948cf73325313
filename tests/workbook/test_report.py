"""Report text helpers."""

from __future__ import annotations

import math

import pandas as pd

from flexrel_core.workbook.report import markdown_table, pct


def test_markdown_table():
    text = markdown_table(pd.DataFrame({"a": [1.23456, 2.0], "b": ["x", "y"]}), ".3g")
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x |", "| 2 | y |"]


def test_pct_is_nan_safe():
    assert pct(0.975) == "97.5 %" and pct(math.nan) == "—" and pct(None) == "—"
