"""Atomic writes and verified cached stages.

Every file is written to a temporary name in the same folder (``.<name>.<pid>.<random>.tmp<suffix>``)
and moved into place with ``os.replace``, so an interrupted run leaves either the old file or the
new one, never a corrupt half-file; a rerun then finds what was finished and resumes from there.
The temporary file gets the mode an ordinary new file would get (``0o666`` less the umask) before
the move, and temporary files left behind by a process that no longer runs (killed, power cut) are
removed by the next write to the same name.

A cached value is stored with ``torch.save`` beside ``<file>.sha256``, the sha256 of its bytes. On
load the checksum is checked first and the file is read with ``torch.load(weights_only=True)``, which
never runs code from the file; a missing, corrupt or unreadable entry is reported by path (a logging
warning) and recomputed, never used. Values are therefore restricted to tensors, ``None``, bools,
ints, floats, strings and dicts, lists and tuples of those; NumPy scalars are converted to Python
numbers when saved, anything else is refused when saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed

log = logging.getLogger(__name__)


def file_mode() -> int:
    """The permission bits of an ordinary new file: ``0o666`` less the process's umask."""
    try:
        with open("/proc/self/status") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of earlier writes of ``path`` whose writer no longer runs; returns them.

    A temporary name carries its writer's process id; one without an id (from an older version of
    this module) counts as stale.
    """
    path = Path(path)
    removed = []
    # mkstemp's random part is 8 characters of [a-z0-9_]; the suffix pins the name to this target.
    pattern = re.compile(
        re.escape(f".{path.name}.") + r"(?:(\d+)\.)?[a-z0-9_]{8}" + re.escape(f".tmp{path.suffix}") + r"\Z"
    )
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp*"):
        match = pattern.match(tmp.name)
        if match is None or (match.group(1) and _pid_alive(int(match.group(1)))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    for tmp in removed:
        log.info("removed %s, left by an interrupted run", tmp)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded (mode: ``file_mode()``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
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


def storable(value: Any, where: str = "value") -> Any:
    """``value`` made of what ``torch.load(weights_only=True)`` reads back: tensors, None, bools, ints,
    floats, strings, and dicts (string or int keys), lists and tuples of those. NumPy scalars and
    subclasses of the basic types (``numpy.float64``, ``IntEnum``) become plain Python values;
    anything else raises ``TypeError`` naming where it sits in ``value``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    for basic in (bool, int, float, str):
        if isinstance(value, basic):
            return basic(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"cache {where} has a key {k!r} of type {type(k).__name__}; keys must be str or int")
            out[k] = storable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [storable(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(
        f"cache {where} is a {type(value).__module__}.{type(value).__qualname__}; a cached value may hold only "
        "tensors, None, bools, ints, floats, strings and dicts/lists/tuples of those (convert it before caching)"
    )


def _checksum_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(obj: Any, path: str | Path) -> Path:
    """Atomically ``torch.save`` a storable ``obj`` and write the file's sha256 to ``<path>.sha256``."""
    path = Path(path)
    digest = []

    def write(tmp: str) -> None:
        torch.save(storable(obj), tmp)
        digest.append(_sha256(tmp))

    atomic_write(path, write)
    write_text(_checksum_path(path), digest[0] + "\n")
    return path


def load_verified(path: str | Path) -> Any:
    """The value saved at ``path`` by ``save_torch``, after checking its sha256; raises ``ValueError``
    (naming the file) when the checksum is missing or differs, or the file cannot be read safely."""
    path = Path(path)
    checksum = _checksum_path(path)
    if not checksum.exists():
        raise ValueError(f"cache entry {path} has no checksum file {checksum.name}")
    expected, actual = checksum.read_text().strip(), _sha256(path)
    if actual != expected:
        raise ValueError(f"cache entry {path} is corrupt or truncated (sha256 {actual[:12]}, expected {expected[:12]})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or unreadable pickle
        raise ValueError(f"cache entry {path} cannot be loaded safely: {type(err).__name__}: {err}") from err


def cached(path: str | Path, compute: Callable[[], Any], *, config: dict | None = None) -> Any:
    """Load ``path`` if it holds a verified entry, else ``compute()``, save it atomically (with
    ``config`` as ``<path>.json`` beside it) and return it. A corrupt entry is logged and recomputed.

    The value returned after computing is the one stored (``storable(compute())``), so a first run
    and a rerun that loads see the same types.

    Under a process group (``distributed.active``) every rank runs ``compute`` (its collectives need
    them all) or loads: rank 0 decides which and tells the others; rank 0 alone writes, and the
    others wait at a barrier until the entry is in place (``distributed.rank0_writes``). Every rank
    reads the same cache folder, so on several nodes it must be on a file system they share."""
    path = Path(path)
    if distributed.active():
        return _cached_by_rank0(path, compute, config)
    if path.exists():
        try:
            return load_verified(path)
        except ValueError as err:
            log.warning("%s; recomputing it", err)
    value = storable(compute())
    if config is not None:
        write_json(path.with_suffix(path.suffix + ".json"), config)
    save_torch(value, path)
    return value


def _cached_by_rank0(path: Path, compute: Callable[[], Any], config: dict | None) -> Any:
    """``cached`` on every rank of a process group: loaded by all if rank 0 finds a verified entry,
    else computed by all and written by rank 0."""
    value, found = None, False
    if distributed.rank() == 0 and path.exists():
        try:
            value, found = load_verified(path), True
        except ValueError as err:
            log.warning("%s; recomputing it", err)
    if distributed.from_rank0(found):
        return value if distributed.rank() == 0 else load_verified(path)
    value = storable(compute())
    with distributed.rank0_writes() as writer:
        if writer:
            if config is not None:
                write_json(path.with_suffix(path.suffix + ".json"), config)
            save_torch(value, path)
    return value
