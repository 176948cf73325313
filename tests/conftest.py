"""Shared fixtures: seeded tiny models, and notebook execution under the quick profile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flexrel_core.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def quick_cache(tmp_path_factory) -> Path:
    """One cache folder for every notebook test of the session (they share the trained model)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory) -> Path:
    """Where notebook tests write ``<results_root>/quick/...``."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def run_quick(quick_cache, quick_results):
    """``run_quick("fig1")`` executes notebooks/fig1.ipynb under the quick profile, once per
    session, and returns the folder it wrote (``<tmp>/quick``)."""
    from flexrel_core.runner import run_notebook

    done: dict[str, Path] = {}

    def run(name: str, **extra) -> Path:
        if name not in done:
            extra = {"cache_root": str(quick_cache), **extra}
            run_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", "quick", quick_results, extra=extra)
            done[name] = quick_results / "quick"
        return done[name]

    return run
