"""Settings that must survive what the user does on the Attack Lab: chart options reach the share link,
and a visit to the Upload or Camera image source keeps the gallery image, the class filter and the
threshold, both in session state and in what the browser shows.

The browser is needed where the fault is in what the page draws (a fragment rerun, a widget drawn anew);
the AppTest checks look at what the server sends along with a widget that comes back."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import app_server, chromium, new_tab, wait_idle
from browser import settle as _settle
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent

MAIN = str(ROOT / "app" / "main.py")


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _browser_shows(widget):
    """What a browser shows for a widget it draws anew: the value sent along with it, else its default."""
    p = widget.proto
    if widget.type == "selectbox":
        return p.raw_value if p.set_value else p.options[p.default]
    values = p.value if p.set_value else p.default
    return values[0] if widget.type == "slider" else values


def test_a_photo_source_visit_keeps_the_gallery_and_threshold_settings(models_dir):
    at = AppTest.from_file(MAIN, default_timeout=300)
    at.query_params["attack"] = "fgsm"
    at.run()
    at.selectbox(key="lab_cls").set_value("cat").run()
    at.number_input(key="lab_idx").set_value(7).run()
    at.slider(key="lab_thr").set_value(12.0).run()  # not the default (10%)
    for source in ("upload", "camera"):
        at.radio(key="lab_src").set_value(source).run()
        at.radio(key="lab_src").set_value(source).run()  # a second run while the gallery is hidden
        at.radio(key="lab_src").set_value("cifar").run()
        _clean(at)
        assert at.session_state["lab_idx"] == 7 and at.session_state["lab_cls"] == "cat"
        assert at.session_state["lab_thr"] == 12.0
        assert _browser_shows(at.number_input(key="lab_idx")) == 7
        assert _browser_shows(at.selectbox(key="lab_cls")) == "cat"
        assert _browser_shows(at.slider(key="lab_thr")) == 12.0
        assert "exceeds 12% of the strongest" in "\n".join(c.value for c in at.caption)


# -- in Chromium -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app_url(standin_pretrained, tmp_path_factory):
    """The app served on a free port with the stand-in models."""
    env = {"CAS_PRETRAINED_DIR": str(standin_pretrained)}
    yield from app_server(tmp_path_factory, env, "streamlit_state.log")


@pytest.fixture(scope="module")
def tab(app_url):
    """A Chromium tab; each test opens its own link in it (a new session)."""
    with chromium() as browser:
        yield new_tab(browser)


def _wait_idle(page) -> None:
    """Wait until the run that the last action started has finished."""
    wait_idle(page, 300)


def _wait_query(page, text: str) -> None:
    """Wait until the address bar's query holds ``text`` (the page writes it when it runs)."""
    page.wait_for_function(f"() => decodeURIComponent(location.search).includes({text!r})")
    _wait_idle(page)


def _class_filter_shown(page) -> str:
    """The class filter's text as drawn (its value may be the text of an input box)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Class filter").first
    return box.evaluate("e => [...e.querySelectorAll('input')].map(i => i.value).join(' ') + ' ' + e.innerText")


def _threshold_shown(page) -> str:
    return page.locator('[data-testid="stSlider"] [data-testid="stSliderThumbValue"]').first.inner_text()


@pytest.mark.browser
def test_share_link_follows_the_chart_options(app_url, tab):
    from playwright.sync_api import expect

    page = tab
    page.goto(app_url + "/?attack=fgsm&img=3")
    _settle(page, 2)
    link = page.locator('[data-testid="stCode"]').filter(has_text="http").first
    expect(link).not_to_contain_text("sort=")
    page.get_by_text("channel number").first.click()
    _wait_query(page, "sort=index")
    expect(link).to_contain_text("sort=index", timeout=30_000)
    page.locator('[data-testid="stSlider"] input[type="range"]').first.focus()
    page.keyboard.press("ArrowRight")  # 10% -> 10.5%
    _wait_query(page, "thr=10.5")
    expect(link).to_contain_text("thr=10.5", timeout=30_000)
    expect(link).to_contain_text("sort=index")


PHOTO_INPUTS = {"Upload a photo": "stFileUploader", "Camera": "stCameraInput"}


def _visit_photo_source(page, source: str) -> None:
    """Switch the image source to ``source`` and back to the CIFAR-10 gallery."""
    page.get_by_text(source).first.click()
    page.locator(f'[data-testid="stMain"] [data-testid="{PHOTO_INPUTS[source]}"]').first.wait_for()
    _wait_idle(page)
    page.get_by_text("CIFAR-10 test image").first.click()
    page.get_by_role("spinbutton", name="Test image number").wait_for()
    _wait_idle(page)
    page.locator('[data-testid="stSlider"]').first.wait_for()


@pytest.mark.browser
@pytest.mark.parametrize("source", list(PHOTO_INPUTS))
def test_a_photo_source_visit_keeps_what_the_browser_shows(app_url, tab, source):
    page = tab
    page.goto(app_url + "/?attack=fgsm&cls=cat&img=7&thr=12")
    _settle(page, 2)
    number = page.get_by_role("spinbutton", name="Test image number")
    assert number.input_value() == "7" and "cat" in _class_filter_shown(page)
    assert _threshold_shown(page) == "12.00"
    _visit_photo_source(page, source)
    assert number.input_value() == "7" and "cat" in _class_filter_shown(page)
    assert _threshold_shown(page) == "12.00"
    assert page.get_by_text(re.compile("exceeds 12% of the strongest")).count() >= 1
    # the next changes send the browser's values back: they must still be the kept ones
    page.get_by_text("mask weight").first.click()
    _wait_query(page, "sort=mask")
    _visit_photo_source(page, source)
    assert number.input_value() == "7" and "cat" in _class_filter_shown(page)
    assert _threshold_shown(page) == "12.00"
    assert all(f"{p}&" in page.url + "&" for p in ("img=7", "cls=cat", "thr=12"))
    assert page.get_by_text("test image #7 (", exact=False).count() >= 1
