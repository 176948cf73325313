"""Execute one notebook under a profile with papermill: ``python -m flexrel_core.workbook.runner NB --profile P``.

The executed copy is written under a temporary name and moved to
``results/<profile>/notebooks/<name>.ipynb`` only on success, so a failed run never leaves a
notebook that looks complete; the failing cell's traceback goes to the terminal and the exit code
is non-zero. Kernel ``python3``; progress bars in console mode; logs streamed (``--log-output``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .cache import atomic_write
from .paths import REPO_ROOT, results_dir
from .profiles import parameters_for


def run_notebook(
    notebook: str | Path, profile: str, results_root: str | Path = REPO_ROOT / "results", extra: dict | None = None
) -> Path:
    """Execute ``notebook`` with the ``profile`` parameters (plus ``extra``); returns the executed copy's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    params = parameters_for(profile, notebook)
    params.update(extra or {})
    params["results_root"] = str(results_root)
    out = results_dir(profile, results_root) / "notebooks" / notebook.name
    os.environ.setdefault("FLEXREL_PROGRESS", "console")

    def execute(tmp: str) -> None:
        try:
            papermill.execute_notebook(
                str(notebook),
                tmp,
                parameters=params,
                kernel_name="python3",
                cwd=str(REPO_ROOT),
                log_output=True,
                progress_bar=False,
                language="python",
            )
        except PapermillExecutionError as err:
            raise NotebookFailed(
                f"{notebook.name} failed in cell {err.exec_count}:\n{err.ename}: {err.evalue}\n"
                + "".join(err.traceback)
            ) from None

    start = time.time()
    atomic_write(out, execute)
    logging.getLogger(__name__).info("%s done in %.1f s -> %s", notebook.name, time.time() - start, out)
    return out


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message carries its traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        run_notebook(args.notebook, args.profile)
    except (NotebookFailed, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
