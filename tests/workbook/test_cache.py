"""Atomic writes and cached stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexrel_core.workbook.cache import atomic_write, cached


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_cached_computes_once_and_writes_config(tmp_path):
    calls = []
    value = cached(tmp_path / "x.pt", lambda: calls.append(1) or {"v": 3}, config={"a": 1})
    again = cached(tmp_path / "x.pt", lambda: calls.append(1) or {"v": 4})
    assert value == again == {"v": 3} and len(calls) == 1
    assert json.loads((tmp_path / "x.pt.json").read_text()) == {"a": 1}
