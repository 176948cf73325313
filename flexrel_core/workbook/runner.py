"""Execute one notebook under a profile with papermill: ``python -m flexrel_core.workbook.runner NB --profile P``.

The parameters are checked first (``profiles.parameters_for``: declared types and documented
ranges), so a bad profile value stops the run before any work. The executed copy is written under
a temporary name and moved to ``results/<profile>/notebooks/<name>.ipynb`` only on success, so a
failed run never leaves a notebook that looks complete; the failing cell's traceback goes to the
terminal and the exit code is non-zero. SIGTERM ends the run like Ctrl-C (the temporary copy is
removed), and a temporary copy left by a run that was killed outright is removed by the next run.
The executed copy records the commit it ran at, whether the working tree differed from it, and the
machine (CPU, torch's instruction set: ``provenance.machine``), in a note under its title and in its
metadata (``flexrel``). Kernel ``python3``.

The terminal stays quiet: one line per notebook (its name, wall and CPU time, where the executed copy
went and its log), the progress bars of long stages and any warning (the kernel's stderr), and on failure
the error with the cell that raised it. The kernel's whole stream output (log lines, progress bars,
warnings) goes to ``results/<profile>/<name>.log``; cell outputs (tables, figures) stay in the executed
notebook, never echoed; papermill's own chatter and the kernel's start-up warnings are silenced.

The executed copy is what a reader sees, so it is written clean (``clean_notebook``): stream
output (log lines, progress bars, warnings) went to the terminal as the cells ran and is not kept
in the notebook; figures are drawn into their cells (inline backend); no execution times, no machine
paths (``results_root`` is passed relative to the repository when it lies inside it), no widget state
(a widget becomes a note), so a rerun that computes the same numbers writes the same bytes.
Papermill's "Passed unknown parameter" warning is silenced for the names the parameters cell
declares (papermill's own parser skips annotations such as ``str | None``; ``profiles`` checks them).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .cache import atomic_write
from .parameters import check
from .paths import REPO_ROOT, results_dir, shown
from .profiles import ProfileError, notebook_declarations, parameters_for
from .provenance import describe_commit, describe_machine, git_state, library_versions, machine


def run_notebook(
    notebook: str | Path, profile: str, results_root: str | Path = REPO_ROOT / "results", extra: dict | None = None
) -> Path:
    """Execute ``notebook`` with the ``profile`` parameters (plus ``extra``); returns the executed copy's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    params = parameters_for(profile, notebook)
    declared = notebook_declarations(notebook)
    problems = [p for k, v in (extra or {}).items() if (p := check(k, v, declared.get(k))) is not None]
    if problems:
        raise ProfileError(f"extra parameters for {notebook.name}: " + "; ".join(problems))
    params.update(extra or {})
    params["results_root"] = shown(Path(results_root))
    out = results_dir(profile, results_root) / "notebooks" / notebook.name
    log_path = results_dir(profile, results_root) / f"{notebook.stem}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLEXREL_PROGRESS", "console")
    provenance = {"profile": profile, **git_state(), "libraries": library_versions(), "machine": machine()}

    known = KnownParameters(set(declared) | set(params))
    pm_log = logging.getLogger("papermill")

    def execute(tmp: str) -> None:
        pm_log.addFilter(known)
        level = pm_log.level
        pm_log.setLevel(logging.WARNING)  # not its "Input Notebook: ..." lines
        backend = os.environ.get("MPLBACKEND")
        os.environ["MPLBACKEND"] = INLINE_BACKEND  # the kernel inherits it: figures show in their cells
        try:
            with open(log_path, "w") as log:
                papermill.execute_notebook(
                    str(notebook),
                    tmp,
                    parameters=params,
                    kernel_name="python3",
                    cwd=str(REPO_ROOT),
                    log_output=False,  # cell outputs stay in the notebook
                    stdout_file=log,  # the kernel's log lines
                    stderr_file=Tee(log, sys.stderr),  # progress bars and warnings: the terminal sees them too
                    progress_bar=False,
                    language="python",
                    extra_arguments=["--IPKernelApp.log_level=ERROR"],  # not its start-up warnings
                )
        except PapermillExecutionError as err:
            raise NotebookFailed(
                f"{notebook.name} failed in cell {err.exec_count}:\n{err.ename}: {err.evalue}\n"
                + "".join(err.traceback)
                + f"\n(the kernel's log up to the failure: {shown(log_path)})"
            ) from None
        finally:
            pm_log.removeFilter(known)
            pm_log.setLevel(level)
            if backend is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = backend
        record_provenance(tmp, provenance)
        clean_notebook(tmp)

    start, cpu = time.time(), _children_cpu_s()
    atomic_write(out, execute)
    print(
        f"{notebook.stem}: done in {time.time() - start:.1f} s ({_children_cpu_s() - cpu:.0f} CPU s) -> "
        f"{shown(out)}, figures and tables in {shown(out.parent.parent)}/ (log: {shown(log_path)})",
        flush=True,
    )
    return out


def _children_cpu_s() -> float:
    """CPU seconds used so far by this process's finished children -- the kernel, and the worker processes
    it started and waited for: a notebook's cost that another load on the machine hardly changes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_provenance(path: str | Path, provenance: dict) -> None:
    """Write ``provenance`` (profile, commit, dirty paths, library versions, machine) into the executed
    notebook at ``path``: as ``metadata["flexrel"]`` and as a note after its first cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["flexrel"] = provenance
    versions = ", ".join(f"{k} {v}" for k, v in provenance["libraries"].items())
    note = nbformat.v4.new_markdown_cell(
        f"*Executed under profile `{provenance['profile']}` at {describe_commit(provenance)} on "
        f"{describe_machine(provenance.get('machine'))}; {versions}.*"
    )
    note.metadata["tags"] = ["provenance"]
    nb.cells.insert(1, note)
    nbformat.write(nb, str(path))


# The kernel draws figures into their cells (a terminal's MPLBACKEND=Agg would leave them out).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
WIDGET = "application/vnd.jupyter.widget-view+json"
# What an executed notebook shows where a live widget was: outside a kernel it is invisible.
WIDGET_NOTE = (
    "*An interactive widget was here: it runs only in a live kernel. Use it in JupyterLab (`make lab`) or "
    "as a web page (`make app`); REPORT.md shows its static views.*"
)
# Notebook and cell metadata that papermill and nbclient write and that change on every run
# (times, durations) or name the machine (absolute input and output paths).
_RUN_KEYS = ("start_time", "end_time", "duration", "input_path", "output_path", "exception")


def clean_notebook(path: str | Path) -> None:
    """Rewrite the executed notebook at ``path`` as a reader should get it: no stream output (logs,
    progress bars and warnings, already streamed to the terminal that ran it), no execution times
    in cell or notebook metadata, no absolute input/output paths, no random ids; a widget becomes a
    note saying where to use it."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for key in _RUN_KEYS:
        nb.metadata.get("papermill", {}).pop(key, None)
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", [])) & {"injected-parameters", "provenance"}
        if tags:  # cells the run adds get a fixed id (papermill and nbformat draw random ones)
            cell.id = tags.pop()
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type == "code":
            cell.outputs = [_static(o) for o in cell.outputs if o.get("output_type") != "stream"]
    nb.metadata.pop("widgets", None)  # widget state: random model ids, and nothing a reader can use
    nbformat.write(nb, str(path))


def _static(output):
    """A widget's output replaced by a note (its model id is random and it shows nothing outside a kernel)."""
    import nbformat

    if WIDGET not in output.get("data", {}):
        return output
    return nbformat.v4.new_output("display_data", data={"text/markdown": WIDGET_NOTE})


class KnownParameters(logging.Filter):
    """Drops papermill's "Passed unknown parameter: NAME" for names the notebook does declare."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = "Passed unknown parameter: "
        message = record.getMessage()
        return not (message.startswith(prefix) and message[len(prefix) :] in self.names)


class Tee:
    """A text stream that writes to several (the notebook's log and the terminal)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message carries its traceback."""


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C would, so that cleanup (the temporary notebook) runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--results-root", default=str(REPO_ROOT / "results"), help="results go to <this>/<profile>/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_notebook(args.notebook, args.profile, args.results_root)
    except (NotebookFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
