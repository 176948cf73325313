"""The project itself: pins in one place, clean source notebooks, the package's three floors, a
self-contained repository, an installed package, and `make test` equal to CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from flexrel_core.workbook.paths import REPO_ROOT


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


FLOORS = {"method": 0, "workbook": 1, "paper": 2}


def _floor(module: str) -> str:
    """``flexrel_core.paper.fig2`` -> ``paper``; a top-level module is the method floor."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in FLOORS else "method"


def _imports(path) -> list[str]:
    """The ``flexrel_core`` modules a source file imports, as absolute names."""
    import ast

    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target + "." + a.name for a in node.names] if not node.module else [target]
            out += names
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("flexrel_core")]


def test_imports_only_go_down_the_three_floors():
    """paper -> workbook -> method: a module never imports from a floor above its own."""
    upward = []
    for path in sorted((REPO_ROOT / "flexrel_core").rglob("*.py")):
        source = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for target in _imports(path):
            if FLOORS[_floor(target)] > FLOORS[_floor(source)]:
                upward.append(f"{source} imports {target}")
    assert not upward, upward
    assert {
        _floor(m) for m in ("flexrel_core.scores", "flexrel_core.workbook.cache", "flexrel_core.paper.fig1")
    } == set(FLOORS)


def _repository_files() -> list[Path]:
    """Files of the repository: tracked and untracked-but-not-ignored ones (cache, venv, results of
    local runs and executed notebooks are left out), or every file when this is no git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "cache", "data", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [
            str(p.relative_to(REPO_ROOT))
            for p in REPO_ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO_ROOT).parts)
        ]
    return [REPO_ROOT / n for n in names if (REPO_ROOT / n).is_file()]


def _texts() -> dict[str, str]:
    texts = {}
    for path in _repository_files():
        data = path.read_bytes()
        if b"\0" not in data[:4096]:
            texts[str(path.relative_to(REPO_ROOT))] = data.decode("utf-8", errors="replace")
    return texts


# Documents outside the repository, and numbered tickets, mean nothing to a reader of the repository.
OUTSIDE = re.compile(r"\b(?:DESIGN|CONVENTIONS)\.md\b|\bDESIGN\s+item\b|\bissues?\s*#?\s*\d+|\bthe\s+issue\b", re.I)


def test_no_file_refers_to_documents_outside_the_repository():
    texts = _texts()
    assert "flexrel_core/relevance.py" in texts and "README.md" in texts
    found = [
        f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for name, text in texts.items()
        for m in OUTSIDE.finditer(text)
    ]
    assert not found, found


def test_paths_named_in_the_repository_exist():
    """``tests/...py`` and ``docs/...md`` mentioned anywhere (code, docstrings, README) are real files."""
    named = {
        (name, ref)
        for name, text in _texts().items()
        for ref in re.findall(r"\b(?:tests|docs)/[\w/.-]*\w\.(?:py|md)\b", text)
    }
    assert named
    missing = sorted((name, ref) for name, ref in named if not (REPO_ROOT / ref).is_file())
    assert not missing, missing


def test_method_specification_is_in_the_repository_and_linked():
    method = (REPO_ROOT / "docs" / "method.md").read_text()
    for topic in ("Magnitude", "Layer-wise Relevance", "rel(w_kj)", "Convolutions as fully connected", "Normalisation"):
        assert topic in method, topic
    for topic in ("Pruning factor", "Ties", "Schedules", "Pitfalls", "δ"):
        assert topic.lower() in method.lower(), topic
    assert "](docs/method.md)" in (REPO_ROOT / "README.md").read_text()


def test_package_imports_from_any_folder(tmp_path):
    """``make setup`` installs the project: a Python of this environment started elsewhere, with no
    PYTHONPATH, imports this checkout's package (as a kernel of a JupyterLab a user starts would)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import flexrel_core, flexrel_core.workbook.runner, flexrel_core.paper.fig1; print(flexrel_core.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"flexrel_core is not installed in {sys.prefix}; run `make setup`\n{out.stderr}"
    assert Path(out.stdout.strip()).resolve() == REPO_ROOT / "flexrel_core" / "__init__.py", (
        f"the environment's flexrel_core is {out.stdout.strip()}, not this checkout's; `make setup` re-points it"
    )


def test_make_test_is_what_ci_runs():
    """CI runs `make test` and nothing else; `make test` itself provides Chromium for the browser
    test, runs the whole suite (browser test included) and needs no PYTHONPATH."""
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].startswith("make test ") and not any("apt-get" in c or "pytest" in c for c in commands)
    plan = subprocess.run(
        ["make", "-n", "test", f"VENV={sys.prefix}"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "/usr/bin/chromium" in plan and "apt-get install" in plan and "sudo apt-get install chromium" in plan
    pytest_lines = [line for line in plan.splitlines() if line.strip().endswith("/bin/pytest")]
    assert pytest_lines, plan  # the whole suite: no -m selection, nothing deselected
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "PYTHONPATH" not in makefile


def _readable_text(path: Path) -> str:
    """A committed result's text, without the base64 payload of a notebook's images (whose alphabet has '/')."""
    text = path.read_text(errors="replace")
    if path.suffix != ".ipynb":
        return text
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            for kind in [k for k in output.get("data", {}) if k.startswith("image/") and k != "image/svg+xml"]:
                del output["data"][kind]
    return nbformat.writes(nb)


def test_committed_results_name_no_folder_of_the_machine_that_made_them():
    """A committed report, CSV, JSON or notebook shows paths relative to the repository (or the last parts of
    a folder outside it), never where the repository, the home or the temporary folder lay."""
    import tempfile

    files = subprocess.run(["git", "ls-files", "results"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    machine = re.compile(
        "|".join(
            re.escape(p.rstrip("/") + "/") for p in {str(REPO_ROOT.parent), tempfile.gettempdir(), str(Path.home())}
        )
        + r"|(?<![\w.~/-])/(?:work|tmp|root|home|Users|mnt|scratch)/[\w.-]+/"
    )
    found = {}
    for name in files.split():
        path = REPO_ROOT / name
        if path.suffix in {".md", ".csv", ".json", ".ipynb", ".txt"} and path.exists():
            if hit := machine.search(_readable_text(path)):
                found[name] = hit.group(0)
    assert not found, found


def test_readme_opens_with_the_committed_runs_claims_table():
    from flexrel_core.paper import checked, claims

    folder = REPO_ROOT / "results" / "default"
    table = "\n".join(checked.section(folder, claims.claims(folder), link_prefix="results/default/").splitlines()[2:])
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme.index("## The paper's claims, checked") < readme.index("## Two commands")
    assert table.strip() in readme
