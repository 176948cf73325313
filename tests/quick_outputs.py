"""What the paper notebooks' tests share: the quick profile's model size and the files every item writes."""

from __future__ import annotations

from pathlib import Path

from flexrel_core.layers import prunable_count
from flexrel_core.workbook.config import TrainConfig
from flexrel_core.workbook.pipeline import data_for, new_model
from flexrel_core.workbook.profiles import read_profile

QUICK = read_profile("quick")
_cfg = TrainConfig.from_mapping(QUICK["common"])
# prunable weights of the quick profile's model: the resolution of a measured sparsity
N_WEIGHTS = prunable_count(new_model(_cfg, data_for(_cfg)))


def figure_and_section(folder: Path, figure: str, section: str) -> str:
    """Assert that ``<figure>.png``/``.svg`` and ``report/<section>.md`` were written; return the section."""
    for fmt in ("png", "svg"):
        path = folder / f"{figure}.{fmt}"
        assert path.is_file() and path.stat().st_size > 1000, path
    report = folder / "report" / f"{section}.md"
    assert report.is_file()
    return report.read_text()
