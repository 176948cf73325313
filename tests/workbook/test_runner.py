"""The notebook runner: a failing cell reaches the terminal with its traceback and leaves no output."""

from __future__ import annotations

import pytest
from notebooks_util import write_notebook

from flexrel_core.workbook.runner import NotebookFailed, run_notebook


@pytest.mark.notebook
def test_failing_notebook_reports_traceback_and_leaves_no_output(tmp_path, monkeypatch):
    nb = write_notebook(
        tmp_path / "boom.ipynb", 'profile: str = "quick"\nresults_root: str = "results"', "raise RuntimeError('kaput')"
    )
    monkeypatch.setattr("flexrel_core.workbook.profiles.read_profile", lambda *args: {})
    with pytest.raises(NotebookFailed, match="kaput"):
        run_notebook(nb, "quick", tmp_path / "results")
    assert not (tmp_path / "results" / "quick" / "notebooks" / "boom.ipynb").exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
