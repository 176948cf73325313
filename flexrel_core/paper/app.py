"""The explorer as a web page: ``python -m flexrel_core.paper.app --profile P`` (``make app``).

Serves ``notebooks/explore.ipynb`` with Voilà: the notebook runs in a kernel of this environment
and the page shows only its controls, views and student text, no code (``--strip_sources``). The
notebook is given the profile's parameters in a temporary copy (papermill, ``prepare_only``),
without the cells tagged ``static-views`` (the static figures, the timing and the report section
that ``make reproduce`` writes) or ``notebook-only`` (what the notebook reads and writes: text for
whoever runs it, not for students); relative cache and data folders are made absolute, since the
kernel runs in the copy's folder. The page uses the template in ``page/`` (Voilà's lab template
without its CDN links: the page fetches nothing beyond 127.0.0.1). The server listens on
127.0.0.1 only, behind a random token, and the URL to open (token included) is printed.

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop it cleanly: Voilà is asked to stop (it shuts its kernels
down), whatever it started and is still there is ended, the port is free and the copy removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from ..workbook.paths import REPO_ROOT
from ..workbook.profiles import notebook_parameters, parameters_for
from ..workbook.runner import KnownParameters

NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
HIDDEN_TAGS = ("static-views", "notebook-only")  # cells of the explorer notebook that the page leaves out
# The page computes nothing for the report: no timed moves, no static figures.
APP_PARAMETERS = {"timing_moves": 0, "static_points": []}
PAGE_ROOT = Path(__file__).with_name("page")  # a Jupyter data folder holding voila/templates/flexrel/
TEMPLATE = "flexrel"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 10.0  # seconds Voilà has to stop its kernels before what is left is ended


def app_notebook(profile: str, folder: str | Path, **overrides) -> Path:
    """``<folder>/explore.ipynb``: the explorer with ``profile``'s parameters (plus ``overrides``),
    without its ``HIDDEN_TAGS`` cells, ready for Voilà."""
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
    nb.cells = [c for c in nb.cells if not set(HIDDEN_TAGS) & set(c.metadata.get("tags", []))]
    nbformat.write(nb, str(out))
    return out


def voila_command(notebook: str | Path, port: int, token: str) -> list[str]:
    """The Voilà command serving ``notebook`` on 127.0.0.1:``port`` behind ``token``, sources stripped,
    with the page's template (run it with ``voila_env``, which makes the template findable)."""
    return [
        sys.executable, "-m", "voila", str(notebook),
        "--no-browser", "--Voila.ip=127.0.0.1", f"--Voila.port={port}", "--Voila.port_retries=0",
        f"--Voila.token={token}", "--strip_sources=True", "--show_tracebacks=True", f"--template={TEMPLATE}",
        f"--Voila.root_dir={Path(notebook).parent}",
    ]  # fmt: skip


def voila_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``PAGE_ROOT`` first on ``JUPYTER_PATH``."""
    env = dict(os.environ if env is None else env)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(PAGE_ROOT), env.get("JUPYTER_PATH", "")) if p)
    return env


def url(port: int, token: str) -> str:
    """The address of the page, token included."""
    return f"http://127.0.0.1:{port}/?token={token}"


class Stop(Exception):
    """One of ``STOP_SIGNALS`` arrived."""


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first of ``signals`` to arrive raises ``Stop`` (so ``finally`` clauses
    and context managers run) and later ones are ignored (they would cut the clean-up short); the
    previous handlers are restored afterwards."""
    arrived: list[int] = []

    def handler(signum, frame):
        if not arrived:
            arrived.append(signum)
            raise Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_process_tree(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to ``proc`` (Voilà shuts its kernels down on it), then SIGTERM and, after ``grace_s``,
    SIGKILL to every process it had started that is still there (kernels run in sessions of their own)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def serve(command: Sequence[str], *, cwd: str | Path, env: Mapping[str, str] | None = None) -> int:
    """Run ``command`` (the server) in a session of its own until it exits, or until ``Stop`` is
    raised here; either way nothing it started is left running. Returns its exit status."""
    proc = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env), start_new_session=True)
    try:
        return proc.wait()
    finally:
        stop_process_tree(proc)


def parse_overrides(items: Sequence[str]) -> dict:
    """``NAME=VALUE`` pairs (VALUE a YAML literal) as a dict; a name the explorer does not declare is refused."""
    declared = notebook_parameters(NOTEBOOK)
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in declared:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(declared)}")
        out[name] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="a parameter of notebooks/explore.ipynb, e.g. --set delta=1.0 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    token = secrets.token_hex(16)
    try:
        with stop_on_signals(), tempfile.TemporaryDirectory(prefix="flexrel-app-") as folder:
            notebook = app_notebook(args.profile, folder, **overrides)
            print(f"The explorer ({args.profile} profile) will be at\n\n    {url(args.port, token)}\n", flush=True)
            print("The first load trains or reads the model and its relevance; Ctrl-C stops the server.", flush=True)
            return serve(voila_command(notebook, args.port, token), cwd=folder, env=voila_env())
    except Stop as stop:
        print(f"stopped ({stop}): server, kernels and temporary folder gone", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
