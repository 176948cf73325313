"""Parameter profiles shared by the Makefile and the tests: ``profiles/<profile>/``.

A profile folder holds ``common.yaml`` (parameters every notebook gets when it declares them) and
one ``<notebook>.yaml`` per notebook (its own parameters, overriding ``common``). Only the names
a notebook's ``parameters`` cell declares are passed to it; a name that no notebook declares is
refused (papermill itself would only warn).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .paths import check_profile, profile_dir


def read_profile(profile: str) -> dict:
    """``{"common": {...}, "<notebook>": {...}}`` from the files of ``profiles/<profile>/``."""
    data = {}
    for path in sorted(profile_dir(profile).glob("*.yaml")):
        with open(path) as fh:
            section = yaml.safe_load(fh) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path} must hold a mapping of parameter names to literals")
        data[path.stem] = section
    return data


def notebook_parameters(notebook: str | Path) -> set[str]:
    """Names a notebook's ``parameters`` cell assigns.

    Read with ``ast`` rather than ``papermill.inspect_notebook``, which skips annotated names it
    cannot parse (``data_root: str | None = None``) and would let their profile values vanish.
    """
    import ast

    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged `parameters`, found {len(cells)}")
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def parameters_for(profile: str, notebook: str | Path) -> dict:
    """The parameters ``notebook`` runs with under ``profile``, validated against its parameters cell."""
    data = read_profile(check_profile(profile))
    name = Path(notebook).stem
    declared = notebook_parameters(notebook)
    own = data.get(name) or {}
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ValueError(
            f"profile {profile!r} gives {name} parameters it does not declare: {unknown}; "
            f"its parameters cell declares {sorted(declared)}"
        )
    common = data.get("common") or {}
    known = set().union(*(notebook_parameters(nb) for nb in sorted(Path(notebook).parent.glob("*.ipynb"))))
    if sorted(set(common) - known):
        raise ValueError(
            f"profile {profile!r} has common parameters no notebook declares: {sorted(set(common) - known)}"
        )
    params = {k: v for k, v in common.items() if k in declared}
    params.update(own)
    missing = {"profile", "results_root"} - set(declared)
    if missing:
        raise ValueError(f"{notebook} must declare the parameters {sorted(missing)}")
    params["profile"] = profile
    return params
