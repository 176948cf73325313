"""Shared fixtures: seeding, a small cached sweep, and notebook execution under the quick profile."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flexrel_core.workbook.paths import REPO_ROOT


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
    from flexrel_core.workbook.runner import run_notebook

    done: dict[str, Path] = {}

    def run(name: str, **extra) -> Path:
        if name not in done:
            extra = {"cache_root": str(quick_cache), **extra}
            run_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", "quick", quick_results, extra=extra)
            done[name] = quick_results / "quick"
        return done[name]

    return run


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> SimpleNamespace:
    """Figure 2's sweep on digits (2 epochs, 2 seeds, 3 pruning factors, with a class shift), computed
    once per session into its own cache: ``df`` and ``seconds``, and what made them (``base``,
    ``pcfg``, ``grid``, ``shift``, ``cache``) for tests that rerun or extend it."""
    from flexrel_core.paper import fig2
    from flexrel_core.workbook.config import PruneConfig, TrainConfig
    from flexrel_core.workbook.pipeline import shift_spec

    ns = SimpleNamespace(
        base=TrainConfig(dataset="digits", image_size=8, epochs=2, seed=0),
        pcfg=PruneConfig(inference_samples=64, fine_tune_epochs=1),
        grid=[0.0, 0.5, 0.9],
        shift=shift_spec([0, 1, 2], None),
        cache=tmp_path_factory.mktemp("sweep_cache"),
    )
    ns.df = fig2.compute(
        ns.base, ns.pcfg, pruning_factors=ns.grid, seeds=[0, 1], delta=0.5, shift=ns.shift, cache_root=ns.cache,
        device="cpu",
    )  # fmt: skip
    return ns
