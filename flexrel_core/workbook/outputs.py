"""Saving what a notebook produces: figures as files (PNG + SVG), CSV tables, report sections.

Widget and inline output is invisible outside a live kernel, so every figure is also a file.
All writes are atomic (``cache.atomic_write``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cache import atomic_write, write_text
from .provenance import git_state

# Metadata that would make the bytes differ between two drawings of the same numbers: dates
# (SVG, PDF). PNG carries only the matplotlib version.
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


def save_figure(fig, folder: str | Path, name: str, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.<fmt>`` for each format; returns the paths.

    Byte-stable: the same figure drawn twice gives the same bytes (no dates in the metadata, and
    SVG element ids derived from a fixed salt rather than a random one), so rewriting results that
    did not change leaves them unchanged in git.
    """
    import matplotlib

    paths = []
    for fmt in formats:

        def write(tmp: str, fmt: str = fmt) -> None:
            with matplotlib.rc_context({"svg.hashsalt": name}):
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=_METADATA.get(fmt))

        paths.append(atomic_write(Path(folder) / f"{name}.{fmt}", write))
    return paths


def save_table(df: pd.DataFrame, folder: str | Path, name: str) -> Path:
    """Write ``df`` as ``<folder>/<name>.csv`` (no index)."""
    return atomic_write(Path(folder) / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))


def write_report_section(folder: str | Path, name: str, markdown: str, samples: pd.DataFrame | None = None) -> Path:
    """One notebook's part of ``REPORT.md``: ``<folder>/report/<name>.md`` (assembled by ``report.py``).

    ``samples`` (``samples.describe``): the data the section's numbers come from, saved as
    ``<name>_samples.csv`` and stated at the end of the section."""
    if samples is not None:
        from .samples import sentence

        save_table(samples, folder, f"{name}_samples")
        markdown = markdown.strip() + "\n\n" + sentence(samples)
    return write_text(Path(folder) / "report" / f"{name}.md", markdown.strip() + "\n")


def git_commit() -> str:
    """The commit the code runs at (``+dirty`` when the working tree has changes), or ``unknown``."""
    state = git_state()
    if state["commit"] is None:
        return "unknown"
    return state["commit"] + ("+dirty" if state["dirty"] else "")
