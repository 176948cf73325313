"""The explorer as a web page: ``python -m flexrel_core.paper.app --profile P`` (``make app``).

Serves ``notebooks/explore.ipynb`` with Voilà: the notebook runs in a kernel of this environment
and the page shows only its controls and views, no code (``--strip_sources``). The notebook is
given the profile's parameters in a temporary copy (papermill, ``prepare_only``), without the
cells tagged ``static-views`` (the static figures, the timing and the report section that
``make reproduce`` writes); relative cache and data folders are made absolute, since the kernel
runs in the copy's folder. The server listens on 127.0.0.1 only, behind a random token, and the
URL to open (token included) is printed. Ctrl-C stops it and removes the copy.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from ..workbook.paths import REPO_ROOT
from ..workbook.profiles import notebook_parameters, parameters_for
from ..workbook.runner import KnownParameters

NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
HIDDEN_TAG = "static-views"  # cells of the explorer notebook that the page leaves out
# The page computes nothing for the report: no timed moves, no static figures.
APP_PARAMETERS = {"timing_moves": 0, "static_points": []}


def app_notebook(profile: str, folder: str | Path, **overrides) -> Path:
    """``<folder>/explore.ipynb``: the explorer with ``profile``'s parameters (plus ``overrides``),
    without its ``static-views`` cells, ready for Voilà."""
    import nbformat
    import papermill

    folder = Path(folder)
    params = {**parameters_for(profile, NOTEBOOK), **APP_PARAMETERS, **overrides}
    known = KnownParameters(set(notebook_parameters(NOTEBOOK)))
    for key in ("cache_root", "data_root"):
        if params.get(key) is not None and not Path(params[key]).is_absolute():
            params[key] = str(REPO_ROOT / params[key])
    params.setdefault("results_root", str(folder / "results"))
    out = folder / NOTEBOOK.name
    logging.getLogger("papermill").addFilter(known)
    try:
        papermill.execute_notebook(
            str(NOTEBOOK), str(out), parameters=params, prepare_only=True, kernel_name="python3", progress_bar=False
        )
    finally:
        logging.getLogger("papermill").removeFilter(known)
    nb = nbformat.read(str(out), as_version=4)
    nb.cells = [c for c in nb.cells if HIDDEN_TAG not in c.metadata.get("tags", [])]
    nbformat.write(nb, str(out))
    return out


def voila_command(notebook: str | Path, port: int, token: str) -> list[str]:
    """The Voilà command serving ``notebook`` on 127.0.0.1:``port`` behind ``token``, sources stripped."""
    return [
        sys.executable, "-m", "voila", str(notebook),
        "--no-browser", "--Voila.ip=127.0.0.1", f"--Voila.port={port}", "--Voila.port_retries=0",
        f"--Voila.token={token}", "--strip_sources=True", "--show_tracebacks=True",
        f"--Voila.root_dir={Path(notebook).parent}",
    ]  # fmt: skip


def url(port: int, token: str) -> str:
    """The address of the page, token included."""
    return f"http://127.0.0.1:{port}/?token={token}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--port", type=int, default=8866)
    args = parser.parse_args(argv)
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="flexrel-app-") as folder:
        notebook = app_notebook(args.profile, folder)
        print(f"The explorer ({args.profile} profile) will be at\n\n    {url(args.port, token)}\n", flush=True)
        print("The first load trains or reads the model and its relevance; Ctrl-C stops the server.", flush=True)
        try:
            return subprocess.call(voila_command(notebook, args.port, token), cwd=folder)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
