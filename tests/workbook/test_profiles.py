"""Parameter profiles: every profile gives the same keys, numbers are numbers, and names a notebook
does not declare, or an unknown profile, are refused."""

from __future__ import annotations

import pytest
from notebooks_util import write_notebook

from flexrel_core.workbook.paths import PROFILES, check_profile
from flexrel_core.workbook.profiles import parameters_for, read_profile


def test_profiles_share_keys_and_yaml_numbers_are_numbers():
    sections = {p: read_profile(p) for p in PROFILES}
    for name in sections["quick"]:
        keys = [set(sections[p].get(name, {})) for p in PROFILES]
        assert keys[0] == keys[1] == keys[2], f"profiles disagree on the keys of {name}"
    for profile in sections.values():
        for section in profile.values():
            for key, value in section.items():
                assert not (isinstance(value, str) and value.replace(".", "").replace("e-", "").isdigit()), key


def test_unknown_parameters_and_profiles_refused(tmp_path, monkeypatch):
    nb = write_notebook(tmp_path / "fig1.ipynb", 'profile: str = "quick"\nresults_root: str = "results"', "x = 1")
    monkeypatch.setattr("flexrel_core.workbook.profiles.read_profile", lambda p: {"fig1": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"does not declare: \['bogus'\]"):
        parameters_for("quick", nb)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        parameters_for("fast", nb)


def test_parameters_with_union_annotations_are_declared(tmp_path, monkeypatch):
    """papermill's inspector skips `x: str | None = None`; the profile value must still reach the notebook."""
    nb = write_notebook(
        tmp_path / "fig1.ipynb",
        'profile: str = "quick"\nresults_root: str = "results"\ndata_root: str | None = None  # folder',
        "x = 1",
    )
    monkeypatch.setattr("flexrel_core.workbook.profiles.read_profile", lambda p: {"fig1": {"data_root": "/data/val"}})
    assert parameters_for("quick", nb)["data_root"] == "/data/val"


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        check_profile("fast")
