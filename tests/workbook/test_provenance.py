"""Cache keys cover code: a change to the code of a stage recomputes it, a change elsewhere does not;
every cached stage is registered; runs record the commit and whether the tree was dirty."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flexrel_core.workbook import provenance
from flexrel_core.workbook.paths import REPO_ROOT, cache_dir
from flexrel_core.workbook.provenance import STAGE_CODE, describe_commit, git_state, module_file, stage_modules

# Runs one relevance stage of a tiny untrained model with the flexrel_core found first on sys.path
# (the copy in the working directory), and prints what it used and what it found.
STAGE = """
import json, sys
from pathlib import Path
import torch
import flexrel_core
from flexrel_core.data import load_dataset
from flexrel_core.models import build_model
from flexrel_core.workbook.paths import cache_dir
from flexrel_core.workbook.pipeline import relevance_for

root = Path(sys.argv[1])
torch.manual_seed(0)
data = load_dataset("digits", seed=0, image_size=8)
model = build_model("digits_cnn", num_classes=10, in_channels=1, image_size=8)
before = sorted(p.name for p in (root / "relevance").glob("*")) if (root / "relevance").exists() else []
rel = relevance_for(model, data, "tiny", samples=16, seed=0, cache_root=root)
print(json.dumps({
    "package": flexrel_core.__file__,
    "new_folders": sorted(set(p.name for p in (root / "relevance").glob("*")) - set(before)),
    "linear": float(rel["classifier.1.weight"].double().sum()),
    "models_folder": cache_dir("models", "tiny", root).name,
}))
"""


def _run_stage(package_root: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", STAGE, str(cache)],
        cwd=package_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["package"].startswith(str(package_root)), result["package"]  # the copy ran, not the checkout
    return result


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_changing_a_stages_code_recomputes_it_and_other_code_does_not(tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "flexrel_core", copy / "flexrel_core", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    first = _run_stage(copy, cache)
    assert len(first["new_folders"]) == 1

    # Unrelated code: plotting of a paper item, the report's text. The cached relevance is reused.
    _edit(copy / "flexrel_core/paper/fig1.py", "def plot(", "def _unused() -> None:\n    pass\n\n\ndef plot(")
    _edit(copy / "flexrel_core/workbook/report.py", "Every number below", "Each number below")
    second = _run_stage(copy, cache)
    assert second["new_folders"] == [] and second["linear"] == first["linear"]

    # The relevance equation itself: a new cache folder, and the value of the new code.
    _edit(
        copy / "flexrel_core/relevance.py",
        "return b_sum[:, None] + a_sum[None, :]",
        "return 2 * (b_sum[:, None] + a_sum[None, :])",
    )
    third = _run_stage(copy, cache)
    assert len(third["new_folders"]) == 1
    assert third["linear"] == pytest.approx(2 * first["linear"], rel=1e-6)
    assert third["models_folder"] == first["models_folder"]  # training does not depend on relevance.py
    code = json.loads((cache / "relevance" / third["new_folders"][0] / "code.json").read_text())
    assert code["stage"] == "relevance" and "relevance" in code["modules"] and "torch" in code["libraries"]


def test_an_unregistered_stage_is_refused(tmp_path):
    with pytest.raises(KeyError, match="'pruned_masks' is not registered.*STAGE_CODE"):
        cache_dir("pruned_masks", "abc", tmp_path)
    assert not (tmp_path / "pruned_masks").exists()


def test_stage_code_follows_method_imports_but_not_presentation():
    modules = stage_modules("points")
    assert {"relevance", "scores", "masks", "layers", "training", "workbook.pipeline"} <= set(modules)
    assert "workbook.config" in modules  # its defaults are left out of configuration hashes
    assert "progress" not in modules  # progress bars never change a number
    assert not {"workbook.report", "workbook.outputs", "paper.style"} & set(modules)
    assert "relevance" not in stage_modules("models")
    for stage, names in STAGE_CODE.items():
        for name in names:
            assert module_file(name).is_file(), (stage, name)


def _cache_dir_calls() -> list[tuple[str, str]]:
    """(module, stage) for every ``cache_dir("<stage>", ...)`` call in the package."""
    calls = []
    for path in sorted((REPO_ROOT / "flexrel_core").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT / "flexrel_core").with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "cache_dir":
                assert node.args and isinstance(node.args[0], ast.Constant), f"{module}: stage must be a literal"
                calls.append((module, node.args[0].value))
    return calls


def test_every_cached_stage_is_registered_with_the_module_that_computes_it():
    calls = _cache_dir_calls()
    assert {stage for _, stage in calls} >= {"models", "relevance", "points"}
    for module, stage in calls:
        assert stage in STAGE_CODE, f"{module} caches stage {stage!r}, missing from STAGE_CODE"
        assert module in stage_modules(stage), f"{module} computes stage {stage!r} but is not in its code"


def test_library_versions_are_part_of_the_code_hash(monkeypatch):
    before = provenance.code_hash("models")
    provenance.stage_code.cache_clear()
    monkeypatch.setattr(provenance, "library_versions", lambda: {"torch": "0.0-other"})
    try:
        assert provenance.code_hash("models") != before
    finally:
        provenance.stage_code.cache_clear()


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_commit_and_dirty_tree_are_described(tmp_path):
    assert describe_commit(git_state(tmp_path)) == "an unknown commit (not a git checkout)"
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "fig.csv").write_text("a\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_state(tmp_path)
    assert clean["commit"] and clean["dirty"] == []
    (tmp_path / "results" / "fig.csv").write_text("b\n")  # a run rewrites results: not a code change
    assert git_state(tmp_path)["dirty"] == []
    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    state = git_state(tmp_path)
    assert state["dirty"] == ["code.py", "new.py"]
    text = describe_commit(state)
    assert clean["commit"] in text and "dirty" in text and "`code.py`" in text


def test_the_machine_record_names_the_cpu_and_the_instruction_set_torch_uses():
    import platform

    import torch

    from flexrel_core.workbook.provenance import describe_machine, machine

    m = machine()
    assert m["arch"] == platform.machine() and m["cpu"] and m["cpu"] != "unknown"
    assert m["torch_cpu"] == torch.backends.cpu.get_cpu_capability()
    assert (m["gpu"] is None) == (not torch.cuda.is_available())
    assert describe_machine(m).startswith(f"{m['arch']}, {m['cpu']}, torch CPU kernels {m['torch_cpu']}")
    assert describe_machine(None) == "an unrecorded machine"
    assert describe_machine({**m, "gpu": "NVIDIA H200"}).endswith(", GPU NVIDIA H200")
