"""End-to-end: the explorer in JupyterLab and as ``make app``'s page, driven by Debian's Chromium (Playwright).

JupyterLab: started on 127.0.0.1 (free port, token, temporary settings and workspaces so that no
news, update or extension pop-up covers the page), it opens a copy of ``notebooks/explore.ipynb``
with the quick parameters injected (papermill, ``prepare_only``), runs all cells from the Run
menu, moves the delta slider with the keyboard, and checks that the displayed pruned accuracy and
mask changed. Saves a screenshot (``make screenshot`` writes the README's ``results/explorer.png``)
and always stops the server.

The page: ``python -m flexrel_core.paper.app`` as ``make app`` runs it, loaded at 1400 px; no code,
no developer text, no request beyond 127.0.0.1, a figure at least 1000 px wide, δ and p moves that
change the numbers; then SIGTERM and, after a restart on the same port, SIGINT each leave no process,
no listener on the port and no temporary folder.

Nothing is downloaded: Chromium is Debian's ``/usr/bin/chromium``, background networking off.
Without it the test fails rather than skips (``make test`` installs it where it can). The JupyterLab
server gets no ``PYTHONPATH``: its kernel imports ``flexrel_core`` as installed by ``make setup``, as
a JupyterLab that a user starts would.
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


def jupyter_env(tmp_path: Path) -> dict:
    """The environment of a Jupyter server under test: its runtime, config and IPython folders in
    ``tmp_path`` (never the user's), kernel ``python3`` from this venv, no progress bars."""
    return {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
        "FLEXREL_PROGRESS": "off",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


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
        **jupyter_env(tmp_path),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
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
        "sparsity": ".flexrel-explorer .flexrel-sparsity",
    }
    numbers = {k: page.locator(sel).inner_text().strip() for k, sel in get.items()}
    numbers["mask"] = page.locator(".flexrel-explorer .flexrel-status-text").get_attribute("data-mask")
    return numbers


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


# Text that belongs in the notebook or the README, never on the students' page.
DEVELOPER_TEXT = re.compile(
    r"continuous_update|flexrel_core|\.ipynb|\.csv|results/|cache|make (app|lab|reproduce)|Reads|Writes|"
    r"data-mask|checksum|\b[0-9a-f]{10}\b"
)
# A stylesheet, script or module that the page would load from another host.
REMOTE_CODE = re.compile(r"""(?:src|href)=["']https?://(?!127\.0\.0\.1)[^"']+|import\(["']https?://[^"']+""")
URL_LINE = re.compile(r"http://127\.0\.0\.1:\d+/\?token=[0-9a-f]+")


class App:
    """``make app``'s command (``python -m flexrel_core.paper.app``) on the quick profile, with a temporary
    cache, results and ``TMPDIR`` (where its temporary folder goes), started and stopped by signal."""

    def __init__(self, tmp_path: Path, cache: Path, port: int) -> None:
        self.tmp, self.port = tmp_path / "tmp", port
        self.tmp.mkdir(exist_ok=True)
        self.results = tmp_path / "results"
        sets = {**START, "cache_root": str(cache), "results_root": str(self.results)}
        self.command = [sys.executable, "-m", "flexrel_core.paper.app", "--profile", "quick", "--port", str(port)]
        for name, value in sets.items():
            self.command += ["--set", f"{name}={json.dumps(value)}"]
        self.env = {**jupyter_env(tmp_path), "TMPDIR": str(self.tmp), "PYTHONPATH": str(REPO_ROOT)}
        self.logs = tmp_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> str:
        """Start the app and return the page's URL (token included) once the server answers."""
        self.starts += 1
        self.log = self.logs / f"app-{self.starts}.log"
        self.proc = subprocess.Popen(
            self.command, env=self.env, cwd=REPO_ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + timeout
        while True:
            found = URL_LINE.search(self.log.read_text())
            if found:
                try:  # a static file answers once the server is up, without starting a kernel
                    token = found.group().rsplit("=", 1)[1]
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/voila/static/voila.js?token={token}").close()
                    return found.group()
                except OSError:
                    pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not start:\n{self.log.read_text()}")
            time.sleep(0.5)

    def descendants(self) -> list:
        return descendants(self.proc.pid)

    def signal_and_check(self, signum: int) -> dict:
        """Send ``signum`` to the app alone (as ``kill`` or Ctrl-C would), and check that it exits 0 with
        its server and kernels gone, the port free and its temporary folder removed; returns timings."""
        import psutil

        started = self.descendants()
        start = time.perf_counter()
        self.proc.send_signal(signum)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()
        stop_s = time.perf_counter() - start
        _, alive = psutil.wait_procs(started, timeout=5)
        assert not alive, f"left running after {signal.Signals(signum).name}: {alive}"
        with socket.socket() as s:  # nothing listens on the port: a server can bind it (the browser's
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger in TIME_WAIT)
            s.bind(("127.0.0.1", self.port))
            s.listen()
        assert not list(self.tmp.glob("flexrel-app-*")), list(self.tmp.iterdir())
        return {"stop_s": stop_s, "processes": len(started)}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            children = self.descendants()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            for child in children:
                if child.is_running():
                    child.kill()


@pytest.fixture()
def app(tmp_path, quick_cache):
    """The app on a free port; always ended afterwards (a failed check leaves nothing behind)."""
    require_chromium()
    from flexrel_core.paper.explore import Explorer

    Explorer.from_params({**parameters_for_quick(), **START, "cache_root": str(quick_cache)})  # cache model, relevance
    server = App(tmp_path, quick_cache, free_port())
    try:
        yield server
    finally:
        server.close()


def parameters_for_quick() -> dict:
    from flexrel_core.workbook.profiles import parameters_for

    return parameters_for("quick", NOTEBOOK)


def open_page(browser, page_url: str, requests: list[str]):
    """A 1400 px wide page on ``page_url`` that records every request's URL (web sockets included) in
    ``requests``; returns ``(page, seconds until the explorer's numbers show)``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    start = time.perf_counter()
    page.goto(page_url)
    page.locator(".flexrel-explorer .flexrel-status-text").wait_for(timeout=120_000)
    return page, time.perf_counter() - start


def external(requests: list[str]) -> list[str]:
    """The requests that leave 127.0.0.1 (data: and blob: URLs stay in the page)."""
    from urllib.parse import urlsplit

    return [u for u in requests if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"]


def test_explorer_as_a_web_page(app):
    """``make app``'s page: the controls, views and student text, no code and no developer text; no request
    leaves 127.0.0.1; the figure is readable at 1400 px; moving δ and p changes the numbers and the mask.
    Then SIGTERM stops it cleanly (server, kernels, port, temporary folder), the next start on the same port
    works, and SIGINT stops that one as cleanly. Prints the load time and the time of one δ and one p move."""
    from playwright.sync_api import expect, sync_playwright

    page_url = app.start()
    with urllib.request.urlopen(page_url.split("?")[0], timeout=10) as response:  # without the token: login
        assert "/login" in response.geturl()
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page, load = open_page(browser, page_url, requests)
            assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor").count() == 0  # no code shown
            text = page.locator("body").inner_text()
            assert not DEVELOPER_TEXT.findall(text), DEVELOPER_TEXT.findall(text)
            assert "Exercise" in text and "δ to 1" in text
            # nothing on the page would fetch from elsewhere, even where it has not (yet) been asked to
            assert not REMOTE_CODE.findall(page.content()), REMOTE_CODE.findall(page.content())
            before = status_numbers(page)
            assert before["delta"] == "0.00" and before["sparsity"] == "0.9000", before
            figure = page.locator(".flexrel-explorer .flexrel-figure img")
            expect(figure).to_be_visible()
            figure_px = figure.bounding_box()["width"]
            assert figure_px >= 1000, f"the figure is {figure_px:.0f} px wide on a 1400 px page"

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
            if SCREENSHOT_TO is None:
                page.screenshot(path=str(app.logs / "app.png"), full_page=True)
        except Exception:
            app.results.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(app.results / "app-failure.png"))
            raise
        assert after_delta["mask"] != before["mask"], (before, after_delta)
        assert after_delta["pruned"] != before["pruned"], (before, after_delta)
        assert after_delta["sparsity"] == "0.9000"
        assert after_p["mask"] != after_delta["mask"], (after_delta, after_p)
        assert not (app.results / "quick" / "report" / "explore.md").exists()  # the page writes no report section

        assert len(app.descendants()) >= 2  # Voilà and the page's kernel
        sigterm = app.signal_and_check(signal.SIGTERM)  # the page still open, as when a teacher stops the app
        page.close()
        page_url = app.start()  # the same port: nothing was left holding it
        page, reload = open_page(browser, page_url, requests)
        page.close()
        sigint = app.signal_and_check(signal.SIGINT)
        browser.close()
    assert external(requests) == [], external(requests)
    moves = f"one δ move {delta_move:.2f} s, one p move {p_move:.2f} s"
    print(
        f"app: page loaded with its numbers in {load:.1f} s (after a restart {reload:.1f} s); {moves}; figure "
        f"{figure_px:.0f} px wide at 1400 px; {len(requests)} requests, none beyond 127.0.0.1; SIGTERM stopped "
        f"{sigterm['processes']} processes in {sigterm['stop_s']:.1f} s, SIGINT {sigint['processes']} in "
        f"{sigint['stop_s']:.1f} s; port free and temporary folder gone each time"
    )
