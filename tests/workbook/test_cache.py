"""Atomic writes and cached stages: verified on load, safe to load, usual permissions, no stale temporaries."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flexrel_core.workbook.cache import atomic_write, cached, file_mode, storable, write_text


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
    assert (tmp_path / "x.pt.sha256").read_text().strip() and (tmp_path / "x.pt").exists()


def _entry(tmp_path: Path) -> tuple[Path, list]:
    calls: list = []
    path = tmp_path / "model.pt"
    value = {"state": {"w": torch.arange(64, dtype=torch.float32)}, "accuracy": 0.5}
    cached(path, lambda: calls.append(1) or value)
    return path, calls


def _recompute(path: Path, calls: list) -> dict:
    return cached(path, lambda: calls.append(1) or {"state": {"w": torch.zeros(64)}, "accuracy": 0.25})


def test_one_flipped_bit_is_refused_by_path_and_recomputed(tmp_path, caplog):
    path, calls = _entry(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="flexrel_core.workbook.cache"):
        value = _recompute(path, calls)
    assert value["accuracy"] == 0.25 and len(calls) == 2  # recomputed, the corrupt value never used
    assert str(path) in caplog.text and "corrupt" in caplog.text
    assert _recompute(path, calls)["accuracy"] == 0.25 and len(calls) == 2  # the new entry verifies


def test_truncated_entry_is_refused_by_path_and_recomputed(tmp_path, caplog):
    path, calls = _entry(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="flexrel_core.workbook.cache"):
        assert _recompute(path, calls)["accuracy"] == 0.25
    assert len(calls) == 2 and str(path) in caplog.text


def test_entry_without_checksum_is_recomputed(tmp_path, caplog):
    path, calls = _entry(tmp_path)
    path.with_suffix(".pt.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="flexrel_core.workbook.cache"):
        assert _recompute(path, calls)["accuracy"] == 0.25
    assert "no checksum" in caplog.text


class _Payload:
    """Unpickling this would create a file: the proof that a cache file ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_cache_file_cannot_run_code(tmp_path, caplog):
    """Even with a matching checksum, a pickle that calls a function is refused (weights_only=True)."""
    import hashlib

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(str(marker))}, path)
    path.with_suffix(".pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with caplog.at_level(logging.WARNING, logger="flexrel_core.workbook.cache"):
        assert cached(path, lambda: {"x": 1}) == {"x": 1}
    assert not marker.exists()
    assert "cannot be loaded safely" in caplog.text


def test_values_are_made_storable_or_refused(tmp_path):
    value = {"a": np.float64(0.5), "b": [np.int64(3), np.bool_(True)], "c": (1, "x", None), 7: torch.ones(2)}
    out = storable(value)
    assert type(out["a"]) is float and type(out["b"][0]) is int and type(out["b"][1]) is bool
    first = cached(tmp_path / "v.pt", lambda: value)
    again = cached(tmp_path / "v.pt", lambda: None)
    assert type(first["a"]) is type(again["a"]) is float  # a first run and a rerun see the same types
    assert again["c"] == (1, "x", None) and torch.equal(again[7], torch.ones(2))
    with pytest.raises(TypeError, match=r"value\['m'\] is a numpy.ndarray"):
        cached(tmp_path / "bad.pt", lambda: {"m": np.zeros(3)})
    with pytest.raises(TypeError, match="keys must be str or int"):
        storable({(1, 2): 3})
    assert not (tmp_path / "bad.pt").exists()


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o644
        write_text(tmp_path / "a.txt", "x")
        cached(tmp_path / "b.pt", lambda: {"v": 1}, config={"k": 1})
        for name in ("a.txt", "b.pt", "b.pt.json", "b.pt.sha256"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
        os.umask(0o007)
        write_text(tmp_path / "c.txt", "x")
        assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_an_interrupted_run_are_removed_by_the_next(tmp_path):
    target = tmp_path / "fig1.ipynb"
    dead = _dead_pid()
    stale = tmp_path / f".fig1.ipynb.{dead}.k2j3h4_x.tmp.ipynb"
    legacy = tmp_path / ".fig1.ipynb.abc123_z.tmp.ipynb"  # an older name without a process id
    live = tmp_path / f".fig1.ipynb.{os.getpid()}.zz9aaaaa.tmp.ipynb"  # a write still under way
    others = [  # other files' temporaries: left to their own writers
        tmp_path / f".fig2.ipynb.{dead}.qqqqqqqq.tmp.ipynb",
        tmp_path / f".fig1.ipynb.json.{dead}.qqqqqqqq.tmp.json",
    ]
    for p in (stale, legacy, live, *others):
        p.write_text("half")
    write_text(target, "done")
    assert target.read_text() == "done"
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and all(p.exists() for p in others)
