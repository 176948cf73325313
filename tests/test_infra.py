"""Configuration hashing, atomic caching, profiles, the notebook runner, and project hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from flexrel_core.cache import atomic_write, cached
from flexrel_core.config import TrainConfig, canonical, config_hash
from flexrel_core.paths import PROFILES, REPO_ROOT
from flexrel_core.profiles import parameters_for, read_profile
from flexrel_core.runner import NotebookFailed, run_notebook


def test_config_hash_is_pinned_and_ignores_defaults():
    # Pinned: changing how configurations hash silently orphans every cached model.
    assert canonical(TrainConfig()) == "TrainConfig{}"
    assert config_hash(TrainConfig()) == "f0f595f751f3"
    assert config_hash(TrainConfig(epochs=12)) == "efdbe672927c"
    assert config_hash(TrainConfig(epochs=30)) == config_hash(TrainConfig())
    assert TrainConfig.from_mapping({"epochs": 12, "unrelated": 1}) == TrainConfig(epochs=12)


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


def test_profiles_share_keys_and_yaml_numbers_are_numbers():
    sections = {p: read_profile(p) for p in PROFILES}
    for name in sections["quick"]:
        keys = [set(sections[p].get(name, {})) for p in PROFILES]
        assert keys[0] == keys[1] == keys[2], f"profiles disagree on the keys of {name}"
    for profile in sections.values():
        for section in profile.values():
            for key, value in section.items():
                assert not (isinstance(value, str) and value.replace(".", "").replace("e-", "").isdigit()), key


def write_notebook(path: Path, params: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_runner_refuses_unknown_parameters_and_profiles(tmp_path, monkeypatch):
    nb = write_notebook(tmp_path / "fig1.ipynb", 'profile: str = "quick"\nresults_root: str = "results"', "x = 1")
    monkeypatch.setattr("flexrel_core.profiles.read_profile", lambda p: {"fig1": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"does not declare: \['bogus'\]"):
        parameters_for("quick", nb)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        parameters_for("fast", nb)


@pytest.mark.notebook
def test_failing_notebook_reports_traceback_and_leaves_no_output(tmp_path, monkeypatch):
    nb = write_notebook(
        tmp_path / "boom.ipynb", 'profile: str = "quick"\nresults_root: str = "results"', "raise RuntimeError('kaput')"
    )
    monkeypatch.setattr("flexrel_core.profiles.read_profile", lambda p: {})
    with pytest.raises(NotebookFailed, match="kaput"):
        run_notebook(nb, "quick", tmp_path / "results")
    assert not (tmp_path / "results" / "quick" / "notebooks" / "boom.ipynb").exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]


def test_environment_yml_mirrors_requirements():
    pins = [
        line.strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == pins
    assert all("==" in p for p in pins)


def test_source_notebooks_carry_no_outputs_and_name_python3():
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3", path
        assert nb.metadata.get("language_info", {}).get("name", "python") == "python", path
        assert nb.cells[0].cell_type == "markdown", path
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path} needs exactly one `parameters` cell"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path} has outputs"


def test_parameters_with_union_annotations_are_declared(tmp_path, monkeypatch):
    """papermill's inspector skips `x: str | None = None`; the profile value must still reach the notebook."""
    nb = write_notebook(
        tmp_path / "fig1.ipynb",
        'profile: str = "quick"\nresults_root: str = "results"\ndata_root: str | None = None  # folder',
        "x = 1",
    )
    monkeypatch.setattr("flexrel_core.profiles.read_profile", lambda p: {"fig1": {"data_root": "/data/val"}})
    assert parameters_for("quick", nb)["data_root"] == "/data/val"
