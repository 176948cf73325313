"""Progress bars that read well both in a terminal and in JupyterLab.

``tqdm.auto`` draws a widget inside a kernel, which under papermill is invisible in logs and heavy
in the executed notebook. The runner sets ``FLEXREL_PROGRESS=console`` for headless runs: a plain
text bar refreshed at most every ``mininterval`` seconds. ``FLEXREL_PROGRESS=off`` silences bars.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def progress(iterable: Iterable | None = None, **kwargs):
    """A tqdm bar suited to where the code runs (see module docstring)."""
    mode = os.environ.get("FLEXREL_PROGRESS", "auto")
    if mode == "off":
        kwargs["disable"] = True
    if mode == "console":
        from tqdm import tqdm

        kwargs.setdefault("mininterval", 15.0)
        kwargs.setdefault("ascii", True)
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)
