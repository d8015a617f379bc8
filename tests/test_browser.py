"""The real app in a real browser: start ``streamlit run app/main.py``, open it in Chromium, run attacks,
check that the prediction and the Plotly charts are drawn, and keep screenshots in ``test-artifacts/``."""
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

pytestmark = pytest.mark.browser


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
    """The app's server (``python -m app.serve``, as ``scripts/app.sh`` starts it) on a free local port with ``env`` added to the environment; yields
    the URL once the server answers its health check, and stops the server (by its pid) afterwards."""
    port = _free_port()
    cmd = [sys.executable, "-m", "app.serve", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(standin_pretrained, tmp_path_factory):
    """The app served on a free port, with the stand-in models."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {"CAS_PRETRAINED_DIR": str(standin_pretrained), "CAS_RUNS_DIR": str(tmp_path_factory.mktemp("runs"))}
    try:
        with serve(env, log) as url:
            yield url
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / "streamlit.log")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1440, "height": 1000})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def _settle(page, charts: int) -> None:
    """Wait until Streamlit has finished the current run (its status widget is gone) and at least
    ``charts`` Plotly charts are drawn (Plotly is loaded lazily, a moment after the page)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    page.locator(".js-plotly-plot").nth(charts - 1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000)


def _screenshot(page, name: str, full: bool = True) -> None:
    """Save a screenshot in test-artifacts/. Streamlit scrolls inside its own container, so for the whole
    page the window is made as tall as the content first."""
    path = str(ARTIFACTS / name)
    if not full:
        page.screenshot(path=path)
        return
    size = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(1500)
    page.screenshot(path=path)
    page.set_viewport_size(size)


def test_attack_lab_in_chromium(server, page):
    page.goto(f"{server}/?model=at-cas&steps=10&img=3")
    page.get_by_text("Result: PGD", exact=False).first.wait_for()
    _settle(page, 2)
    body = page.inner_text("body")
    assert "On the clean image the model says" in body
    assert "L∞ =" in body
    assert page.locator(".js-plotly-plot").count() >= 2  # probabilities + the first module's channels
    assert "Traceback" not in body
    _screenshot(page, "attack_lab_top.png", full=False)
    _screenshot(page, "attack_lab_pgd.png")

    # pick the honest attack from the sidebar menu
    menus = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    menus.filter(has_text="Attack").first.click()
    page.get_by_role("option", name="Soft-mask PGD (CAS-adaptive)").click()
    page.get_by_text("Result: Soft-mask PGD", exact=False).first.wait_for()
    _settle(page, 2)
    assert "soft_mask_pgd" in page.url
    _screenshot(page, "attack_lab_soft_mask.png")

    # a chart option changes the charts without another attack run
    page.get_by_text("mask weight").first.click()
    _settle(page, 2)
    assert "sort=mask" in page.url

    # the settings survive a visit to another page
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_role("link", name="Compare").click()
    page.get_by_text("Compare models").first.wait_for()
    _settle(page, 1)
    nav.get_by_role("link", name="Attack Lab").click()
    page.get_by_text("Result: Soft-mask PGD", exact=False).first.wait_for()
    _settle(page, 2)
    assert "test image #3" in page.inner_text("body")


def test_compare_in_chromium(server, page):
    page.goto(f"{server}/compare?steps=5&img=3")
    page.get_by_text("each model attacked on its own", exact=False).first.wait_for()
    _settle(page, 6)  # 3 models x (probabilities + channels)
    assert "Traceback" not in page.inner_text("body")
    _screenshot(page, "compare.png")


def test_statistics_robustness_and_train_pages_in_chromium(server, page):
    # Channel statistics: compute on a few images, the paper's figures appear
    page.goto(f"{server}/channel_stats")
    page.get_by_text("Compute statistics").first.wait_for()
    page.wait_for_timeout(500)  # let the first script run finish before typing into the form
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    count = page.get_by_role("spinbutton", name="Number of images")
    count.fill("16")
    count.press("Tab")
    page.get_by_role("button", name="Compute statistics").click()
    page.get_by_text("Do the paper's claims hold here?").first.wait_for()
    _settle(page, 8)  # std and at: 2 figures each; at-cas: 2 stages x 2 figures in its first (open) tab
    body = page.inner_text("body")
    assert "Traceback" not in body and "Summary" in body
    _screenshot(page, "channel_stats.png")

    # Robustness: cards, the literature table, the gradient-masking lesson
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_role("link", name="Robustness").click()
    page.get_by_text("Why a CAS model needs adaptive attacks").first.wait_for()
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    body = page.inner_text("body")
    assert "Traceback" not in body and "Soft-mask PGD" in body
    _screenshot(page, "robustness.png")

    # Train: the form to start a run
    nav.get_by_role("link", name="Train").click()
    page.get_by_role("heading", name="Train").first.wait_for()
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=TIMEOUT_MS)
    assert "Traceback" not in page.inner_text("body")
    _screenshot(page, "train.png")
