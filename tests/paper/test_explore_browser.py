"""End-to-end: the explorer in JupyterLab, driven by Debian's Chromium through Playwright.

Starts JupyterLab on 127.0.0.1 (free port, token, temporary settings and workspaces so that no
news, update or extension pop-up covers the page), opens a copy of ``notebooks/explore.ipynb``
with the quick parameters injected (papermill, ``prepare_only``), runs all cells from the Run
menu, moves the delta slider with the keyboard, and checks that the displayed pruned accuracy and
mask changed. Saves a screenshot (``make screenshot`` writes the README's ``results/explorer.png``)
and always stops the server. Nothing is downloaded: Chromium is Debian's ``/usr/bin/chromium``,
background networking off. Without it the test fails rather than skips (``make test`` installs it
where it can). The server gets no ``PYTHONPATH``: its kernel imports ``flexrel_core`` as installed
by ``make setup``, as a JupyterLab that a user starts would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from flexrel_core.workbook.paths import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
# The README's screenshot is refreshed only on request (`make screenshot`), so `make test` leaves the
# committed file as it is; otherwise the screenshot goes to the test's temporary results folder.
SCREENSHOT_TO = os.environ.get("FLEXREL_SCREENSHOT")
# Start where the two ends of the delta slider prune very differently (see test_explore.py).
START = {"delta": 0.0, "pruning_factor": 0.9, "static_points": [[0.5, 0.9]], "timing_moves": 0}
# User settings written to JUPYTERLAB_SETTINGS_DIR: no news / update toasts (they would also need the
# network), no extension-manager prompt, every cell attached to the DOM, no autosave of the copy.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def require_chromium(path: Path = CHROMIUM) -> None:
    """Fail (never skip) when the browser is missing: `make test` installs it, so its absence is an error."""
    if not path.exists():
        pytest.fail(
            f"the browser test needs Debian's Chromium ({path} is missing): run `make test` as root, "
            "which installs it, or `sudo apt-get install chromium`"
        )


def test_missing_chromium_fails_rather_than_skips(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="sudo apt-get install chromium"):
        require_chromium(tmp_path / "no-chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then end its process group and any
    process it started (kernels run in sessions of their own) that is still there."""
    import psutil

    children = descendants(proc.pid)
    try:
        req = urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(req, timeout=5).close()
        proc.wait(timeout=15)
    except Exception:
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(children, timeout=5)
    for child in children:
        if child.is_running():
            child.kill()


@pytest.fixture()
def lab(tmp_path, quick_cache):
    """A JupyterLab server on a copy of the explorer notebook (quick parameters, temporary cache
    and results); yields ``(base_url, token, results_root)`` and stops the server afterwards."""
    require_chromium()
    import papermill

    from flexrel_core.paper.explore import Explorer
    from flexrel_core.workbook.profiles import parameters_for

    root, results = tmp_path / "lab", tmp_path / "results"
    root.mkdir()
    params = {
        **parameters_for("quick", NOTEBOOK),
        **START,
        "cache_root": str(quick_cache),
        "results_root": str(results),
    }
    papermill.execute_notebook(
        str(NOTEBOOK), str(root / NOTEBOOK.name), parameters=params, prepare_only=True, kernel_name="python3"
    )
    settings = tmp_path / "settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    for d in ("workspaces", "runtime", "config", "ipython"):
        (tmp_path / d).mkdir()
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
        "FLEXREL_PROGRESS": "off",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    port, token = free_port(), uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        ],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        # While the server starts: the model and relevance the notebook loads (cached, shared with
        # test_explore.py), so the kernel in the browser only reads them.
        Explorer.from_params(params)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()}") from None
                time.sleep(0.5)
        yield base, token, results
    finally:
        stop_server(proc, base, token)
        log.close()


def status_numbers(page) -> dict:
    """The explorer's displayed numbers, read from their CSS classes."""
    get = {
        "delta": ".flexrel-explorer .flexrel-delta-value",
        "pruned": ".flexrel-explorer .flexrel-pruned-accuracy",
        "mask": ".flexrel-explorer .flexrel-mask-checksum",
        "sparsity": ".flexrel-explorer .flexrel-sparsity",
    }
    return {k: page.locator(sel).inner_text().strip() for k, sel in get.items()}


def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token, results = lab
    screenshot = Path(SCREENSHOT_TO) if SCREENSHOT_TO else results / "explorer.png"
    start = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
            page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            # The kernel is connected and idle (status bar): only then does "Run All Cells" reach it.
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for(timeout=60_000)
            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
            page.locator(".flexrel-explorer .flexrel-status-text").wait_for(timeout=60_000)
            before = status_numbers(page)
            assert before["delta"] == "0.00" and before["sparsity"] == "0.9000", before

            handle = page.locator(".flexrel-explorer .flexrel-delta .noUi-handle")
            handle.focus()
            for _ in range(20):  # 20 steps of 0.05, from magnitude (0) to relevance (1); one update each
                handle.press("ArrowRight")
            expect(page.locator(".flexrel-explorer .flexrel-delta .widget-readout")).to_have_text("1.00")
            # The kernel handles the updates in order: the last one shows delta = 1.00.
            expect(page.locator(".flexrel-explorer .flexrel-delta-value")).to_have_text("1.00", timeout=30_000)
            after = status_numbers(page)
            # The figure is sent before the numbers; let the kernel settle and the image decode.
            page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for(timeout=30_000)
            expect(page.locator(".flexrel-explorer .flexrel-figure img")).to_be_visible()
            page.wait_for_timeout(500)
            page.locator(".flexrel-explorer").evaluate("el => el.scrollIntoView({block: 'center'})")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        except Exception:
            page.screenshot(path=str(results / "browser-failure.png"))
            raise
        finally:
            browser.close()
    assert after["mask"] != before["mask"], f"mask did not change: {before} -> {after}"
    assert after["pruned"] != before["pruned"], f"pruned accuracy did not change: {before} -> {after}"
    assert after["sparsity"] == "0.9000"
    assert (results / "quick" / "report" / "explore.md").exists()  # the notebook ran to its end
    assert screenshot.stat().st_size > 10_000
    print(f"browser test: {time.time() - start:.1f} s in the browser")


@pytest.fixture()
def app_server(tmp_path, quick_cache):
    """``make app``'s server (Voilà, 127.0.0.1, token) on the explorer with the quick parameters and a
    temporary cache and results; yields ``(page_url, results_root)`` and stops the server afterwards."""
    require_chromium()
    from flexrel_core.paper import app
    from flexrel_core.paper.explore import Explorer

    folder, results = tmp_path / "app", tmp_path / "results"
    folder.mkdir()
    overrides = {**START, "cache_root": str(quick_cache), "results_root": str(results)}
    notebook = app.app_notebook("quick", folder, **overrides)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
        "FLEXREL_PROGRESS": "off",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    port, token = free_port(), uuid.uuid4().hex
    log = (tmp_path / "voila.log").open("w")
    proc = subprocess.Popen(
        app.voila_command(notebook, port, token), env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        Explorer.from_params({**parameters_for_quick(), **overrides})  # cache the model and relevance meanwhile
        deadline = time.time() + 60
        while True:
            try:  # a static file answers once the server is up, without starting a kernel
                urllib.request.urlopen(f"{base}/voila/static/voila.js?token={token}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Voilà did not start:\n{(tmp_path / 'voila.log').read_text()}") from None
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:  # without the token: the login page
            assert "/login" in response.geturl()
        yield app.url(port, token), results
    finally:
        stop_server(proc, base, token)
        log.close()


def parameters_for_quick() -> dict:
    from flexrel_core.workbook.profiles import parameters_for

    return parameters_for("quick", NOTEBOOK)


def test_explorer_as_a_web_page(app_server):
    """The page shows the controls and views and no code; moving δ and p changes the numbers and the
    mask. Prints the load time (page requested -> numbers shown) and the time of one δ and one p move."""
    from playwright.sync_api import expect, sync_playwright

    page_url, results = app_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            start = time.perf_counter()
            page.goto(page_url)
            page.locator(".flexrel-explorer .flexrel-status-text").wait_for(timeout=120_000)
            load = time.perf_counter() - start
            assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor").count() == 0  # no code shown
            before = status_numbers(page)
            assert before["delta"] == "0.00" and before["sparsity"] == "0.9000", before

            handle = page.locator(".flexrel-explorer .flexrel-delta .noUi-handle")
            handle.focus()
            start = time.perf_counter()
            handle.press("ArrowRight")  # one step of 0.05
            expect(page.locator(".flexrel-explorer .flexrel-delta-value")).to_have_text("0.05", timeout=30_000)
            delta_move = time.perf_counter() - start
            for _ in range(19):  # on to relevance only (δ = 1)
                handle.press("ArrowRight")
            expect(page.locator(".flexrel-explorer .flexrel-delta-value")).to_have_text("1.00", timeout=60_000)
            after_delta = status_numbers(page)

            p_handle = page.locator(".flexrel-explorer .flexrel-pruning-factor .noUi-handle")
            p_handle.focus()
            start = time.perf_counter()
            p_handle.press("ArrowLeft")  # p from 0.90 to 0.89
            expect(page.locator(".flexrel-explorer .flexrel-sparsity")).to_have_text("0.8900", timeout=60_000)
            p_move = time.perf_counter() - start
            after_p = status_numbers(page)
        except Exception:
            results.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(results / "app-failure.png"))
            raise
        finally:
            browser.close()
    assert after_delta["mask"] != before["mask"] and after_delta["pruned"] != before["pruned"], (before, after_delta)
    assert after_delta["sparsity"] == "0.9000"
    assert after_p["mask"] != after_delta["mask"], (after_delta, after_p)
    assert not (results / "quick" / "report" / "explore.md").exists()  # the page writes no report section
    moves = f"one δ move {delta_move:.2f} s, one p move {p_move:.2f} s"
    print(f"app: page loaded with its numbers in {load:.1f} s; {moves}")
