"""Where things live: every path the notebooks and the Makefile use comes from here.

- ``results/<profile>/``: figures (PNG + SVG), CSV tables, ``REPORT.md`` and report sections,
  executed notebooks under ``notebooks/``.
- ``cache/<stage>/<key>-<code>/``: trained models and every cached stage, named by a hash of its
  configuration (``key``) and of the code and libraries that compute it (``provenance.code_hash``).
"""

from __future__ import annotations

from pathlib import Path

from .provenance import code_hash, stage_code

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_ROOT = REPO_ROOT / "profiles"
PROFILES = ("quick", "default", "paper")  # the profiles shipped; any other folder of profiles/ is one too


def shown(path: str | Path, *, committed: bool = False) -> str:
    """``path`` as a message or a written result should show it: relative to the repository when inside it
    (``results/default``), else as given -- or, for text that may be committed (``committed``), only its last
    three parts (``…/runB/results/default``), so that no file names a folder of the machine that wrote it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return "…/" + "/".join(path.resolve().parts[-3:]) if committed else str(path)


def available_profiles(profiles_root: str | Path = PROFILES_ROOT) -> list[str]:
    """Every profile: each folder under ``profiles_root`` whose name has no leading dot."""
    root = Path(profiles_root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def check_profile(profile: str, profiles_root: str | Path = PROFILES_ROOT) -> str:
    """Refuse a profile name that is not a folder of ``profiles_root`` (a plain name, no path), with
    the available ones. A new profile is a copied folder: ``cp -r profiles/default profiles/mine``."""
    available = available_profiles(profiles_root)
    if not isinstance(profile, str) or profile not in available:
        raise ValueError(
            f"unknown profile {profile!r}: no folder {Path(profiles_root).name}/{profile}; available: "
            f"{', '.join(available) or 'none'} (add one by copying a folder, e.g. cp -r profiles/default profiles/mine)"
        )
    return profile


def results_dir(profile: str, results_root: str | Path = REPO_ROOT / "results") -> Path:
    """``results/<profile>/`` (created)."""
    path = Path(results_root) / check_profile(profile)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(stage: str, key: str, cache_root: str | Path = REPO_ROOT / "cache") -> Path:
    """``cache/<stage>/<key>-<code>/`` (created), e.g. ``cache/models/3f2a9c0d1e4b-9d0c2e71a5f3``.

    ``key`` names the configuration; ``<code>`` is ``provenance.code_hash(stage)``, so a change to
    the code the stage depends on (or to a library version) gives a new, empty folder. The folder
    holds ``code.json``: the hash of every module and the library versions behind that code hash.
    Raises ``KeyError`` for a stage missing from ``provenance.STAGE_CODE``.
    """
    from .cache import write_json

    path = Path(cache_root) / stage / f"{key}-{code_hash(stage)}"
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "code.json").exists():
        write_json(path / "code.json", {"stage": stage, **stage_code(stage)})
    return path


def profile_dir(profile: str) -> Path:
    """``profiles/<profile>/``: ``common.yaml`` plus one ``<notebook>.yaml`` per notebook."""
    return PROFILES_ROOT / check_profile(profile)
