"""Parameter profiles shared by the Makefile and the tests: ``profiles/<profile>/``.

A profile folder holds ``common.yaml`` (parameters every notebook gets when it declares them) and
one ``<notebook>.yaml`` per notebook (its own parameters, overriding ``common``). Only the names
a notebook's ``parameters`` cell declares are passed to it; a name that no notebook declares is
refused (papermill itself would only warn), and so is a value of the wrong type or out of its
documented range (``parameters.RANGES``), with the file, the parameter, the value and what was
expected. ``python -m flexrel_core.workbook.profiles PROFILE`` checks a whole profile against every
notebook before a run starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..data import EMBEDDED
from ..datafiles import check_image_folder
from .parameters import Declaration, check, declarations
from .paths import PROFILES_ROOT, REPO_ROOT, check_profile, shown

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


class ProfileError(ValueError):
    """A profile gives a notebook a parameter it does not declare, or a value it cannot take."""


def read_profile(profile: str, profiles_root: str | Path = PROFILES_ROOT) -> dict:
    """``{"common": {...}, "<notebook>": {...}}`` from the files of ``<profiles_root>/<profile>/``."""
    data = {}
    for path in sorted((Path(profiles_root) / check_profile(profile, profiles_root)).glob("*.yaml")):
        with open(path) as fh:
            try:
                section = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ProfileError(_yaml_problem(path, err)) from None
        if not isinstance(section, dict):
            raise ProfileError(f"{shown(path)} must hold a mapping of parameter names to literals")
        data[path.stem] = section
    return data


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line: the file, the line and column where the faulty construct starts (else where YAML stopped),
    what went wrong and the line itself."""
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
    if mark is None:
        return f"{shown(path)}: not valid YAML ({str(err).splitlines()[0]})"
    said = ": ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
    lines = path.read_text().splitlines()
    line = f" in `{lines[mark.line].strip()}`" if mark.line < len(lines) else ""
    return (
        f"{shown(path)}:{mark.line + 1}:{mark.column + 1}: not valid YAML ({said}){line}; "
        "each line is `name: literal`, lists as [a, b]"
    )


def notebook_declarations(notebook: str | Path) -> dict[str, Declaration]:
    """What a notebook's ``parameters`` cell declares: each name with the types its annotation admits.

    Read with ``ast`` rather than ``papermill.inspect_notebook``, which skips annotated names it
    cannot parse (``data_root: str | None = None``) and would let their profile values vanish.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ProfileError(f"{notebook} must have exactly one cell tagged `parameters`, found {len(cells)}")
    return declarations(cells[0].source)


def notebook_parameters(notebook: str | Path) -> set[str]:
    """Names a notebook's ``parameters`` cell assigns."""
    return set(notebook_declarations(notebook))


def check_values(values: dict, declared: dict[str, Declaration], source: str) -> list[str]:
    """One message per value in ``values`` that its declaration or ``RANGES`` refuses, prefixed by ``source``."""
    problems = (check(name, value, declared.get(name)) for name, value in values.items())
    return [f"{source}: {p}" for p in problems if p is not None]


def parameters_for(profile: str, notebook: str | Path, profiles_root: str | Path = PROFILES_ROOT) -> dict:
    """The parameters ``notebook`` runs with under ``profile``, validated against its parameters cell.

    Raises ``ProfileError`` naming every problem: undeclared names, values of the wrong type or
    outside their documented range (each with its file), missing ``profile``/``results_root``."""
    folder = Path(profiles_root) / check_profile(profile, profiles_root)
    data = read_profile(profile, profiles_root)
    name = Path(notebook).stem
    declared = notebook_declarations(notebook)
    own = data.get(name) or {}
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ProfileError(
            f"{shown(folder / f'{name}.yaml')} gives {name} parameters it does not declare: {unknown}; "
            f"its parameters cell declares {sorted(declared)}"
        )
    common = data.get("common") or {}
    known = set().union(*(notebook_parameters(nb) for nb in sorted(Path(notebook).parent.glob("*.ipynb"))))
    if sorted(set(common) - known):
        raise ProfileError(
            f"{shown(folder / 'common.yaml')} has parameters no notebook declares: {sorted(set(common) - known)}"
        )
    missing = {"profile", "results_root"} - set(declared)
    if missing:
        raise ProfileError(f"{notebook} must declare the parameters {sorted(missing)}")
    shared = {k: v for k, v in common.items() if k in declared and k not in own}
    problems = check_values(shared, declared, shown(folder / "common.yaml"))
    problems += check_values(own, declared, shown(folder / f"{name}.yaml"))
    if problems:
        raise ProfileError(f"profile {profile!r} cannot run {Path(notebook).name}:\n  " + "\n  ".join(problems))
    return {**shared, **own, "profile": profile}


def validate_profile(
    profile: str, notebooks: list[str | Path] | None = None, profiles_root: str | Path = PROFILES_ROOT
) -> dict[str, dict]:
    """``parameters_for`` of every notebook (default: all of ``notebooks/``); one ``ProfileError``
    lists the problems of all of them, so a run never starts on a profile that would fail later."""
    notebooks = notebooks if notebooks is not None else sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    params, problems = {}, []
    for nb in notebooks:
        try:
            params[Path(nb).stem] = parameters_for(profile, nb, profiles_root)
        except ProfileError as err:
            problems += [line.strip() for line in str(err).splitlines()[1:]] or [str(err)]
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ProfileError(f"profile {profile!r} is not valid:\n  " + "\n  ".join(unique))
    return params


def data_problems(common: dict) -> list[str]:
    """What is wrong with where a profile's dataset lives (``dataset``, ``data_root`` of its
    ``common.yaml``; a relative ``data_root`` is taken from the repository root): an embedded
    dataset needs nothing; any other needs a ``data_root`` that exists, and an image folder one
    sub-folder per class with enough images for the stratified splits (``datafiles.check_image_folder``,
    counting only), so a run does not fail after its first minutes. Every image is opened when the
    folder is loaded (``data.load_dataset``)."""
    dataset, root = common.get("dataset"), common.get("data_root")
    if dataset is None or dataset in EMBEDDED:
        return []
    what = (
        "a folder with one sub-folder per class" if dataset == "imagefolder" else "the folder torchvision keeps it in"
    )
    if root is None:
        return [f"dataset {dataset!r} needs data_root: {what}"]
    path = Path(root) if Path(root).is_absolute() else REPO_ROOT / root
    if not path.is_dir():
        return [f"data_root {root!r} does not exist ({shown(path)}); expected {what}"]
    if dataset == "imagefolder":
        try:
            check_image_folder(path, verify=False)  # classes and their image counts; the loader opens each image
        except ValueError as err:
            return [str(err).replace(str(path.resolve()), shown(path))]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a parameter profile against every notebook's parameters cell.")
    parser.add_argument("profile")
    parser.add_argument("notebooks", nargs="*", help="notebooks to check (default: all of notebooks/)")
    args = parser.parse_args(argv)
    try:
        checked = validate_profile(args.profile, args.notebooks or None)
        problems = data_problems(read_profile(args.profile).get("common") or {})
        if problems:
            raise ProfileError(f"profile {args.profile!r} cannot use its data:\n  " + "\n  ".join(problems))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"profile {args.profile!r}: parameters of {', '.join(checked)} checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
