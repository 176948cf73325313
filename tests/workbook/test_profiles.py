"""Parameter profiles: every profile gives the same keys and passes its own checks; names a notebook
does not declare, values of the wrong type or out of range, and unknown profiles are refused before
any work, with the file, the parameter, the value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from notebooks_util import write_notebook

from flexrel_core.workbook.parameters import RANGES, declarations
from flexrel_core.workbook.paths import PROFILES, REPO_ROOT, check_profile
from flexrel_core.workbook.profiles import (
    ProfileError,
    main,
    notebook_parameters,
    parameters_for,
    read_profile,
    validate_profile,
)

PARAMS = """profile: str = "quick"
results_root: str = "results"
epochs: int = 12  # dense training epochs
lr: float = 2.0e-3
data_root: str | None = None  # folder
fine_tune_epochs: int = 1
inference_samples: int | None = 128
seeds: list = [0]
delta: float = 0.5
flag: bool = False
"""


def _setup(tmp_path: Path, common: dict | str | None = None, own: dict | str | None = None) -> tuple[Path, Path]:
    """A notebook ``fig2.ipynb`` declaring ``PARAMS`` and a profile folder ``<tmp>/profiles/quick``."""
    (tmp_path / "notebooks").mkdir()
    nb = write_notebook(tmp_path / "notebooks" / "fig2.ipynb", PARAMS, "x = 1")
    folder = tmp_path / "profiles" / "quick"
    folder.mkdir(parents=True)
    for name, data in (("common", common), ("fig2", own)):
        if data is not None:
            (folder / f"{name}.yaml").write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return nb, tmp_path / "profiles"


def test_profiles_share_keys_and_every_profile_passes_its_checks():
    sections = {p: read_profile(p) for p in PROFILES}
    for name in sections["quick"]:
        keys = [set(sections[p].get(name, {})) for p in PROFILES]
        assert keys[0] == keys[1] == keys[2], f"profiles disagree on the keys of {name}"
    for profile in PROFILES:
        checked = validate_profile(profile)
        assert set(checked) == {p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")}


@pytest.mark.parametrize(
    ("yaml_text", "name", "shown", "expected"),
    [
        ('epochs: "ten"\n', "epochs", "'ten' (str)", "expected int"),
        ("lr: 2e-3\n", "lr", "'2e-3' (str)", "expected float"),  # YAML 1.1 reads 2e-3 as a string
        ("fine_tune_epochs: -1\n", "fine_tune_epochs", "-1", "an integer >= 0"),
        ("inference_samples: -5\n", "inference_samples", "-5", "an integer >= 1"),
        ("seeds: []\n", "seeds", "[]", "a non-empty list of distinct items"),
        ("seeds: [0, 0]\n", "seeds", "[0, 0]", "distinct"),
        ("delta: 1.5\n", "delta", "1.5", "a number in [0, 1]"),
        ("epochs: true\n", "epochs", "True (bool)", "expected int"),
        ("flag: 1\n", "flag", "1 (int)", "expected bool"),
    ],
)
def test_bad_values_are_refused_with_file_parameter_value_and_expectation(tmp_path, yaml_text, name, shown, expected):
    nb, root = _setup(tmp_path, own=yaml_text)
    with pytest.raises(ProfileError) as err:
        parameters_for("quick", nb, root)
    message = str(err.value)
    assert str(root / "quick" / "fig2.yaml") in message
    assert f"{name} = {shown}" in message and expected in message


def test_values_that_fit_are_accepted(tmp_path):
    own = {"epochs": 0, "lr": 2, "data_root": None, "inference_samples": None, "seeds": [0, 1], "delta": 1}
    nb, root = _setup(tmp_path, common={"delta": 0.3, "epochs": 4}, own=own)
    params = parameters_for("quick", nb, root)
    assert params["lr"] == 2 and params["epochs"] == 0 and params["delta"] == 1 and params["profile"] == "quick"


def test_a_bad_common_value_names_common_yaml_and_every_problem_is_listed(tmp_path):
    nb, root = _setup(tmp_path, common={"epochs": "ten"}, own={"seeds": []})
    with pytest.raises(ProfileError) as err:
        validate_profile("quick", [nb], root)
    text = str(err.value)
    assert "common.yaml: epochs = 'ten'" in text and "fig2.yaml: seeds = []" in text


def test_unknown_parameters_and_profiles_refused(tmp_path):
    nb, root = _setup(tmp_path, own={"bogus": 1})
    with pytest.raises(ValueError, match=r"does not declare: \['bogus'\]"):
        parameters_for("quick", nb, root)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        parameters_for("fast", nb, root)


def test_parameters_with_union_annotations_are_declared(tmp_path):
    """papermill's inspector skips `x: str | None = None`; the profile value must still reach the notebook."""
    nb, root = _setup(tmp_path, own={"data_root": "/data/val"})
    assert "data_root" in notebook_parameters(nb)
    assert parameters_for("quick", nb, root)["data_root"] == "/data/val"


def test_declared_types():
    source = "a: int = 1\nb: float | None = None\nc: str = None\nd: list[int] = []\n"
    d = declarations(source + "e: Optional[int] = 1\nf = 0.5\ng: Path = 1\nh = None")
    assert d["a"].types == {"int"} and d["b"].types == {"float", "None"} and d["c"].types == {"str", "None"}
    assert d["d"].types == {"list"} and d["e"].types == {"int", "None"} and d["f"].types == {"float"}
    assert d["g"].types is None and d["h"].types is None  # not checkable: only a range (if any) is checked


def test_every_range_describes_itself():
    for name, rule in RANGES.items():
        assert rule.expected and isinstance(rule.expected, str), name


def test_command_line_checks_a_whole_profile(capsys):
    assert main(["quick"]) == 0
    assert "checked" in capsys.readouterr().out


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        check_profile("fast")


def test_any_profile_folder_is_a_profile_and_a_missing_one_lists_those_there(tmp_path):
    import shutil

    from flexrel_core.workbook.paths import available_profiles

    root = tmp_path / "profiles"
    shutil.copytree(REPO_ROOT / "profiles" / "quick", root / "mine")
    (root / ".hidden").mkdir()
    assert available_profiles(root) == ["mine"] and check_profile("mine", root) == "mine"
    assert set(PROFILES) <= set(available_profiles())  # the shipped ones
    assert validate_profile("mine", profiles_root=root)  # the same checks as the shipped profiles
    with pytest.raises(ValueError, match=r"unknown profile 'fast': no folder profiles/fast; available: mine \(add one"):
        check_profile("fast", root)
    with pytest.raises(ValueError, match="unknown profile '../quick'"):
        check_profile("../quick", root)


@pytest.mark.parametrize(
    "setting",
    [
        {"pruning_factors": [0.9], "knee": [0.9]},  # no name
        {"name": "a", "pruning_factors": [0.9], "knee": [0.95]},  # knee outside the grid
        {"name": "a", "pruning_factors": [0.9], "knee": [0.9], "model": "resnet"},  # a field out of its range
        {"name": "a", "pruning_factors": [0.9], "knee": [0.9], "budgets": [0]},
    ],
)
def test_robustness_settings_are_checked(setting):
    assert not RANGES["settings"]([setting])
    assert RANGES["settings"]([{"name": "a", "pruning_factors": [0.8, 0.9], "knee": [0.9], "resize": 32}])


def test_malformed_yaml_is_refused_in_one_line_naming_the_file_and_line(tmp_path):
    nb, root = _setup(tmp_path, own="epochs: 3\ndelta: [0.5\n")
    with pytest.raises(ProfileError) as err:
        parameters_for("quick", nb, root)
    message = str(err.value)
    assert "\n" not in message and "quick/fig2.yaml:2:8: not valid YAML" in message and "`delta: [0.5`" in message


def test_an_image_folder_with_too_few_images_in_a_class_is_refused_by_the_profile_check(tmp_path):
    from PIL import Image

    from flexrel_core.datafiles import MIN_PER_CLASS
    from flexrel_core.workbook.profiles import data_problems

    root = tmp_path / "images"
    for name, count in (("cat", MIN_PER_CLASS), ("dog", 0), ("owl", MIN_PER_CLASS - 1)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / name / f"{i}.png")
    problems = data_problems({"dataset": "imagefolder", "data_root": str(root)})
    assert len(problems) == 1 and f"fewer than {MIN_PER_CLASS} images" in problems[0]
    assert "'dog': 0" in problems[0] and f"'owl': {MIN_PER_CLASS - 1}" in problems[0] and "cat" not in problems[0]
    (root / "dog").rmdir()
    for i in range(1):
        Image.new("RGB", (4, 4)).save(root / "owl" / f"extra{i}.png")
    assert data_problems({"dataset": "imagefolder", "data_root": str(root)}) == []
