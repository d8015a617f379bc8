"""What the real-browser tests and the load benchmarks share: the app's server on a free local port
(``python -m app.serve``, as ``scripts/app.sh`` starts it), Debian's Chromium driven by Playwright, and
a wait for the end of Streamlit's current run."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer {url} within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(env: dict, log: Path):
    """The app's server on a free local port with ``env`` added to the environment; yields the URL once
    the server answers its health check, and stops the server (by its pid) afterwards."""
    with serve_process(env, log) as (url, _proc):
        yield url


@contextlib.contextmanager
def serve_process(env: dict, log: Path, port: int | None = None, args: tuple[str, ...] = ()):
    """:func:`serve` on ``port`` (default: a free one) with extra Streamlit ``args``; yields
    ``(url, process)``, the process being the server itself (for its pid and memory)."""
    port = port or _free_port()
    cmd = [sys.executable, "-m", "app.serve", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc, log)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def app_server(tmp_path_factory, env: dict, log_name: str):
    """For a module-scoped fixture: skips without Chromium, serves the app with ``env`` (finished runs
    in a fresh empty folder unless ``env`` says otherwise) and keeps the server's log in
    ``test-artifacts/log_name``."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {"CAS_RUNS_DIR": str(tmp_path_factory.mktemp("runs")), **env}
    try:
        with serve(env, log) as url:
            yield url
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / log_name)


@contextlib.contextmanager
def chromium():
    """Headless Chromium (Debian's, through Playwright), closed afterwards."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_tab(browser, width: int = 1440, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    return page


def wait_idle(page, pause_ms: int = 500) -> None:
    """Wait until Streamlit has finished the current run: ``pause_ms`` for the run that the last action
    started to show its status widget, then until that widget is gone."""
    page.wait_for_timeout(pause_ms)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)


def settle(page, charts: int = 1, pause_ms: int = 1000) -> None:
    """Wait until Streamlit has finished the current run and at least ``charts`` Plotly charts are drawn
    (Plotly is loaded lazily, a moment after the page)."""
    wait_idle(page)
    page.locator(".js-plotly-plot").nth(charts - 1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(pause_ms)


def save_png(page, paths, full: bool = False, max_height: int = 4000) -> int:
    """A screenshot saved to each of ``paths`` as a palette PNG (128 colours, so that it stays small);
    ``full``: the whole page (Streamlit scrolls inside its own container, so the window is made as tall
    as the content first). Returns the size in bytes."""
    import io

    from PIL import Image

    if full:
        size = page.viewport_size
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, max_height)})
        page.wait_for_timeout(1500)
    png = page.screenshot()
    if full:
        page.set_viewport_size(size)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
    return Path(paths[0]).stat().st_size
