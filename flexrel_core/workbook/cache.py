"""Atomic writes and cached stages.

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so an interrupted run leaves either the old file or the new one, never a corrupt
half-file; a rerun then finds what was finished and resumes from there.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """Atomically ``torch.save``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cached(path: str | Path, compute: Callable[[], Any], *, config: dict | None = None) -> Any:
    """Load ``path`` if it exists, else ``compute()``, save it atomically (with ``config`` as
    ``<path>.json`` beside it) and return it. Values are anything ``torch.save`` takes."""
    path = Path(path)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    value = compute()
    if config is not None:
        write_json(path.with_suffix(path.suffix + ".json"), config)
    save_torch(value, path)
    return value
