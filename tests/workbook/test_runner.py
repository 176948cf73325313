"""The notebook runner: a failing cell reaches the terminal with its traceback and leaves no output;
parameters are checked before the kernel starts; the executed copy records the commit; SIGTERM
leaves no temporary notebook."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from notebooks_util import write_notebook

from flexrel_core.workbook.paths import REPO_ROOT
from flexrel_core.workbook.profiles import ProfileError
from flexrel_core.workbook.provenance import describe_machine, git_state, machine
from flexrel_core.workbook.runner import NotebookFailed, run_notebook

# The runner's command line with profiles that give nothing (the test notebooks take their defaults).
_DRIVER = (
    "import sys, flexrel_core.workbook.profiles as p; p.read_profile = lambda *a: {}; "
    "from flexrel_core.workbook.runner import main; sys.exit(main(sys.argv[1:]))"
)
PARAMS = 'profile: str = "quick"\nresults_root: str = "results"\nepochs: int = 1'


@pytest.fixture()
def no_profile(monkeypatch):
    """Profiles give nothing: the notebooks of these tests take their defaults."""
    monkeypatch.setattr("flexrel_core.workbook.profiles.read_profile", lambda *args: {})


@pytest.mark.notebook
def test_failing_notebook_reports_traceback_and_leaves_no_output(tmp_path, no_profile):
    nb = write_notebook(tmp_path / "boom.ipynb", PARAMS, "raise RuntimeError('kaput')")
    with pytest.raises(NotebookFailed, match="kaput"):
        run_notebook(nb, "quick", tmp_path / "results")
    assert not (tmp_path / "results" / "quick" / "notebooks" / "boom.ipynb").exists()
    left = [p.relative_to(tmp_path / "results") for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert left == [Path("quick/boom.log")]  # the kernel's log, kept for the reader of the error; no notebook


def test_bad_parameters_are_refused_before_the_kernel_starts(tmp_path, no_profile):
    nb = write_notebook(tmp_path / "nb.ipynb", PARAMS, "x = 1")
    with pytest.raises(ProfileError, match=r"epochs = -1: expected an integer >= 0"):
        run_notebook(nb, "quick", tmp_path / "results", extra={"epochs": -1})
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p != nb]


@pytest.mark.notebook
def test_executed_notebook_records_the_commit(tmp_path, no_profile):
    nb = write_notebook(tmp_path / "ok.ipynb", PARAMS, "x = epochs + 1")
    out = run_notebook(nb, "quick", tmp_path / "results")
    data = json.loads(out.read_text())
    meta = data["metadata"]["flexrel"]
    state = git_state()
    assert meta["commit"] == state["commit"] and meta["dirty"] == state["dirty"] and meta["profile"] == "quick"
    note = "".join(data["cells"][1]["source"])
    assert state["commit"] in note and ("dirty" in note) == bool(state["dirty"])
    assert meta["machine"] == machine() and f"on {describe_machine(machine())};" in note
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.notebook
def test_sigterm_leaves_no_temporary_notebook(tmp_path):
    nb = write_notebook(tmp_path / "slow.ipynb", PARAMS, "import time\ntime.sleep(120)")
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(nb), "--profile", "quick", "--results-root", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    folder = results / "quick" / "notebooks"
    deadline = time.time() + 120
    while not list(folder.glob(".slow.ipynb.*.tmp*")):  # the kernel is running the notebook
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output
    assert not [p.name for p in folder.iterdir()], output


@pytest.mark.notebook
def test_the_terminal_gets_one_line_per_notebook_its_progress_and_warnings(tmp_path):
    """Run as `make reproduce` runs it: stdout is the notebook's one line; stderr has its progress bars and
    warnings but neither the kernel's start-up warning nor cell outputs; the log file has every stream."""
    body = (
        "import logging, sys, warnings\n"
        "import pandas as pd\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)\n"
        "logging.getLogger('x').info('training for %d epochs', epochs)\n"
        "print('\\rbar 50%', file=sys.stderr)\n"
        "warnings.warn('careful')\n"
        "display(pd.DataFrame({'column_shown_in_the_notebook': [1, 2]}))"
    )
    nb = write_notebook(tmp_path / "quiet.ipynb", PARAMS, body)
    results = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(nb), "--profile", "quick", "--results-root", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("quiet: done in") and "quiet.log" in lines[0], run.stdout
    assert "bar 50%" in run.stderr and "careful" in run.stderr
    assert "without encryption" not in run.stderr and "column_shown_in_the_notebook" not in run.stderr + run.stdout
    log = (results / "quick" / "quiet.log").read_text()
    assert "training for 1 epochs" in log and "bar 50%" in log and "training" not in run.stderr


@pytest.mark.notebook
def test_executed_notebook_is_clean_and_byte_stable(tmp_path, no_profile, monkeypatch, caplog):
    """Logs, progress bars and warnings reach the terminal, not the notebook; figures do; a widget
    becomes a note; no times, no machine paths; the same numbers give the same bytes; papermill does
    not call declared parameters unknown."""
    body = (
        "import logging, sys, warnings\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)\n"
        "logging.getLogger('x').info('training for %d epochs', epochs)\n"
        "print('\\rbar 50%', file=sys.stderr)\n"
        "warnings.warn('careful')\n"
        "import ipywidgets, matplotlib.pyplot as plt\n"
        "display(ipywidgets.IntSlider())\n"
        "plt.plot([1, 2])\n"
        "epochs * 2"
    )
    nb = write_notebook(tmp_path / "clean.ipynb", "data_root: str | None = None\n" + PARAMS, body)
    results = REPO_ROOT / "results" / f".test-{os.getpid()}"
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as `make` sets it: the figure still shows in its cell
    try:
        with caplog.at_level(logging.WARNING, logger="papermill"):
            out = run_notebook(nb, "quick", results, extra={"data_root": None})
        first = out.read_bytes()
        out.unlink()
        second = run_notebook(nb, "quick", results, extra={"data_root": None}).read_bytes()
    finally:
        shutil.rmtree(results, ignore_errors=True)
    assert first == second
    data = json.loads(first)
    outputs = [o for c in data["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    kinds = sorted((o["output_type"], *sorted(o.get("data", {}))) for o in outputs)
    assert kinds == [  # only what the cell computes: a note for the widget, the figure, the value
        ("display_data", "image/png", "text/plain"),
        ("display_data", "text/markdown"),
        ("execute_result", "text/plain"),
    ], kinds
    assert "widgets" not in data["metadata"] and "make app" in json.dumps(outputs)
    assert all("execution" not in c["metadata"] and "papermill" not in c["metadata"] for c in data["cells"])
    assert str(REPO_ROOT) not in first.decode() and str(tmp_path) not in first.decode().replace(str(nb), "")
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]
