"""What produced a result: the source code of each cached stage, library versions, the git commit, and
the machine (``machine``: its CPU and the instruction set torch's kernels use).

A cached stage is keyed by its configuration *and* by the code that computes it, so editing that
code moves the stage to a new cache folder (``paths.cache_dir``) and the next run recomputes it,
while editing code the stage does not use (report text, plotting) leaves its cache valid.

``STAGE_CODE`` names, for every stage, the modules of ``flexrel_core`` whose source its result
depends on (names relative to the package). The code hash of a stage covers those modules, every
method-floor module they import (directly or not: ``masks`` brings ``layers``), the versions of
the libraries that compute numbers (``LIBRARIES``), and nothing else. Imports of listed
``workbook``/``paper`` modules are *not* followed: those modules mix computation with drawing and
reporting, so the method modules a stage needs from them are listed explicitly. A stage that uses
the output of another is keyed by the other's configuration, not its folder, so it lists the
other's modules too (``relevance`` is computed from the trained model: it includes ``models``).
A stage missing from ``STAGE_CODE`` is refused, so a new stage cannot skip the code hash:
register it with one line.

Modules are read as files (never imported), from the package that is running, and hashed once per
process: a long-lived kernel that edits code must be restarted for its results to be keyed by it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path

PACKAGE = "flexrel_core"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The dense model: its data, architecture, training loop and configuration (config.py holds the
# defaults that a configuration hash leaves out, so it is code of every stage).
_MODEL = ("data", "models", "training", "workbook.config", "workbook.pipeline")
_RELEVANCE = (*_MODEL, "relevance")
_SIGNALS = (*_MODEL, "data_scores", "workbook.signals")
_POINTS = (*_RELEVANCE, "data_scores", "workbook.signals", "scores", "masks", "workbook.points")

STAGE_CODE: dict[str, tuple[str, ...]] = {
    "models": _MODEL,
    "dense_eval": _MODEL,
    "relevance": _RELEVANCE,
    "signals": _SIGNALS,
    "points": _POINTS,
    "iterative": _POINTS,
    "costs": (*_POINTS, "encoding", "workbook.measure", "paper.table1"),
    "federated": (*_POINTS, "encoding", "paper.federated"),
}

# Modules that never change a number (progress bars): left out of every code hash.
NEUTRAL = frozenset({"progress"})

# Distributions whose versions are part of every code hash (their arithmetic is the stages' arithmetic).
LIBRARIES = ("torch", "torchvision", "zennit", "numpy", "scikit-learn")


def module_file(name: str) -> Path:
    """The source file of ``flexrel_core.<name>`` (a package's ``__init__.py``), found without importing it."""
    base = PACKAGE_DIR.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ValueError(f"no module {PACKAGE}.{name} under {PACKAGE_DIR}")


def _method_imports(name: str) -> set[str]:
    """Method-floor modules (relative names) that ``flexrel_core.<name>`` imports."""
    path = module_file(name)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module.split(".")[1:]
            else:
                continue
            candidates = [target] if node.module else [[*target, a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == PACKAGE]
        else:
            continue
        found.update(".".join(c) for c in candidates if len(c) == 1 and c[0] not in ("workbook", "paper"))
    return {m for m in found if m}


def stage_modules(stage: str) -> list[str]:
    """Every module whose source the code hash of ``stage`` covers, sorted."""
    if stage not in STAGE_CODE:
        raise KeyError(
            f"cache stage {stage!r} is not registered: add a line to {PACKAGE}.workbook.provenance.STAGE_CODE "
            f"naming the modules its result depends on (registered: {sorted(STAGE_CODE)})"
        )
    seen: set[str] = set()
    todo = list(STAGE_CODE[stage])
    while todo:
        name = todo.pop()
        if name in seen or name in NEUTRAL:
            continue
        seen.add(name)
        if "." not in name:  # method floor: follow its imports
            todo.extend(_method_imports(name))
    return sorted(seen)


def library_versions() -> dict[str, str]:
    """Installed versions of ``LIBRARIES`` (``"absent"`` for one that is not installed)."""
    versions = {}
    for dist in LIBRARIES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


@functools.cache
def stage_code(stage: str) -> dict:
    """``{"modules": {name: sha256 of its source}, "libraries": {dist: version}}`` of ``stage``."""
    modules = {m: hashlib.sha256(module_file(m).read_bytes()).hexdigest() for m in stage_modules(stage)}
    return {"modules": modules, "libraries": library_versions()}


def code_hash(stage: str) -> str:
    """12 hex digits of sha256 over ``stage_code(stage)``: changes whenever the stage's code or libraries do."""
    text = json.dumps(stage_code(stage), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def git_state(root: str | Path | None = None) -> dict:
    """``{"commit": short sha or None, "dirty": [changed paths]}`` of the checkout at ``root``.

    A path counts as changed when it is modified, staged, deleted or untracked (and not ignored);
    ``results/`` is left out, since a run rewrites the results it compares against.
    """
    root = Path(root) if root is not None else PACKAGE_DIR.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=all", "--", ".", ":(exclude)results")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": []}
    return {"commit": commit, "dirty": sorted(line[3:].strip() for line in status.splitlines() if line.strip())}


def describe_commit(state: dict, max_paths: int = 10) -> str:
    """One sentence: the commit and, when the tree was dirty, which paths differed from it."""
    if state.get("commit") is None:
        return "an unknown commit (not a git checkout)"
    text = f"commit `{state['commit']}`"
    dirty = state.get("dirty") or []
    if dirty:
        shown = ", ".join(f"`{p}`" for p in dirty[:max_paths])
        if len(dirty) > max_paths:
            shown += f" and {len(dirty) - max_paths} more"
        text += f" with uncommitted changes (the working tree was dirty: {shown})"
    return text


def _cpu_name() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """``{"arch", "cpu", "torch_cpu", "gpu"}``: what computed a run. ``torch_cpu`` is the instruction set
    torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability``, e.g. AVX2, AVX512);
    ``gpu`` the CUDA device's name, or None.

    Float32 sums are rounded in an order that depends on the kernel, so another instruction set gives
    other last bits, which training amplifies: the record says why a rerun elsewhere differs."""
    import torch

    return {
        "arch": platform.machine() or "unknown",
        "cpu": _cpu_name(),
        "torch_cpu": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe_machine(m: dict | None) -> str:
    """One phrase for ``machine()``'s record, e.g. "x86_64, AMD EPYC, torch CPU kernels AVX512"."""
    if not m:
        return "an unrecorded machine"
    text = f"{m['arch']}, {m['cpu']}, torch CPU kernels {m['torch_cpu']}"
    return text + (f", GPU {m['gpu']}" if m.get("gpu") else "")
