"""Where things live: every path the notebooks and the Makefile use comes from here.

- ``results/<profile>/``: figures (PNG + SVG), CSV tables, ``REPORT.md`` and report sections,
  executed notebooks under ``notebooks/``.
- ``cache/``: trained models and every cached stage, named by configuration hash.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("quick", "default", "paper")


def check_profile(profile: str) -> str:
    """Refuse an unknown profile name."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    return profile


def results_dir(profile: str, results_root: str | Path = REPO_ROOT / "results") -> Path:
    """``results/<profile>/`` (created)."""
    path = Path(results_root) / check_profile(profile)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(stage: str, key: str, cache_root: str | Path = REPO_ROOT / "cache") -> Path:
    """``cache/<stage>/<key>/`` (created), e.g. ``cache/models/3f2a9c0d1e4b``."""
    path = Path(cache_root) / stage / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile_dir(profile: str) -> Path:
    """``profiles/<profile>/``: ``common.yaml`` plus one ``<notebook>.yaml`` per notebook."""
    return REPO_ROOT / "profiles" / check_profile(profile)
