"""The real app in a real browser: start ``streamlit run app/main.py``, open it in Chromium, run attacks,
check that the prediction and the Plotly charts are drawn, and keep screenshots in ``test-artifacts/``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from browser import ARTIFACTS, app_server, chromium, new_tab, wait_idle
from browser import settle as _settle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(standin_pretrained, tmp_path_factory):
    """The app served on a free port, with the stand-in models."""
    yield from app_server(tmp_path_factory, {"CAS_PRETRAINED_DIR": str(standin_pretrained)}, "streamlit.log")


@pytest.fixture(scope="module")
def page(server):
    with chromium() as browser:
        yield new_tab(browser)


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

    # the downloads are made when clicked: the exact adversarial image and the channel table
    with page.expect_download() as got:
        page.get_by_role("button", name="Adversarial image (exact, .npy)").click()
    x_adv = np.load(got.value.path(), allow_pickle=False)
    assert got.value.suggested_filename.endswith(".npy")
    assert x_adv.shape == (3, 32, 32) and x_adv.dtype == np.float32 and 0 <= x_adv.min() <= x_adv.max() <= 1
    with page.expect_download() as got:
        page.get_by_role("button", name="Channel values (CSV)").click()
    table = pd.read_csv(got.value.path())
    assert len(table) > 0 and table.notna().all().all()
    _settle(page, 1)

    # pick the honest attack from the sidebar menu
    menus = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    menus.filter(has_text="Attack").first.click()
    page.get_by_role("option", name="Soft-mask PGD (mask-adaptive)").click()
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
    wait_idle(page)  # let the first script run finish before typing into the form
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
    wait_idle(page, 0)
    body = page.inner_text("body")
    assert "Traceback" not in body and "Soft-mask PGD" in body
    _screenshot(page, "robustness.png")

    # Train: the form to start a run
    nav.get_by_role("link", name="Train").click()
    page.get_by_role("heading", name="Train").first.wait_for()
    wait_idle(page, 0)
    assert "Traceback" not in page.inner_text("body")
    _screenshot(page, "train.png")
