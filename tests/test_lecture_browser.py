"""The Lecture page in a real browser, on the bundled models: walk from the first step to the last with
the Next button, checking each step's claim on the page, then presentation mode at 1024 pixels wide.
Screenshots go to ``test-artifacts/``; ``CAS_SCREENSHOTS=1`` also writes the README's
``docs/screenshots/lecture.png`` and ``presentation.png``."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from browser import ARTIFACTS, app_server, chromium, new_tab, save_png, settle

import cas
from app.common import lecture_story as lecture

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "screenshots"
MAX_BYTES = 300_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def expected(cifar_test):
    """Each step's claim sentence, computed here as the page computes it, up to its first number (the
    server's models run in another memory layout, so the last digits of a figure may differ; the
    predicted classes do not)."""
    x, y = cifar_test
    models = {name: cas.load_model(name) for name, _ in lecture.RUNS.values()}
    results = lecture.run_all(models, x[lecture.IMAGE].numpy(), int(y[lecture.IMAGE]))
    out = []
    for step in range(1, len(lecture.STEPS) + 1):
        holds, sentence = lecture.claim(step, results)
        assert holds, sentence
        out.append(re.split(r"\d", sentence.replace("**", ""))[0])
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on the bundled models (no finished runs listed)."""
    yield from app_server(tmp_path_factory, {}, "streamlit_lecture.log")


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as b:
        yield b


def _settle(page, charts: int = 1) -> None:
    settle(page, charts, pause_ms=800)


def _body(page) -> str:
    return re.sub(r"\s+", " ", page.inner_text("body"))


def _save(page, name: str, full: bool = False) -> None:
    """A screenshot in test-artifacts/ (and in docs/screenshots/ with CAS_SCREENSHOTS=1)."""
    size = save_png(page, [ARTIFACTS / name] + ([DOCS / name] if os.environ.get("CAS_SCREENSHOTS") else []), full)
    assert size < MAX_BYTES or not os.environ.get("CAS_SCREENSHOTS"), f"{name} is too large: {size} bytes"


def test_walk_the_lecture_with_next(server, browser, expected):
    page = new_tab(browser, 1280, 900)
    page.goto(f"{server}/lecture")
    n = len(lecture.STEPS)
    for step in range(1, n + 1):
        page.get_by_text(f"Step {step} of {n}", exact=False).first.wait_for()
        _settle(page, 2 if step == n else 1)
        body = _body(page)
        assert "Traceback" not in body and "does not hold" not in body
        assert lecture.STEPS[step - 1].title in body
        start = body.find(expected[step - 1][:20])
        assert expected[step - 1] in body, (step, expected[step - 1], body[start:start + len(expected[step - 1]) + 40])
        assert f"step={step}" in page.url or step == 1
        if step == 2:
            _save(page, "lecture.png", full=True)
        if step < n:
            page.get_by_role("button", name="Next").click()
    assert page.get_by_role("button", name="Next").is_disabled()
    body = _body(page)
    assert "Soft-mask PGD" in body and "The attack succeeded" in body  # the last step: three protocols,
    assert "(not fooled)" in body and "(fooled)" in body  # the paper's holds, the adaptive ones succeed
    page.get_by_role("button", name="Back").click()
    page.get_by_text(f"Step {n - 1} of {n}", exact=False).first.wait_for()
    assert f"step={n - 1}" in page.url
    page.close()


def _fits(page, width: int, min_image: int = 384) -> None:
    """Nothing wider than the window, no two images overlapping, every image at least ``min_image``
    pixels wide, every button inside the window."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    boxes = page.evaluate("""[...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
        .filter(img => !img.closest('[data-testid="stExpander"]'))  // the gallery's thumbnails are not results
        .map(img => { const r = img.getBoundingClientRect();
                      return {x: r.x, y: r.y, width: r.width, height: r.height}; })""")
    assert boxes and all(b["width"] >= min_image for b in boxes), boxes
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_x = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
            overlap_y = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
            assert overlap_x <= 1 or overlap_y <= 1, (a, b)
    for button in page.locator('[data-testid="stMain"] button:visible').all():
        box = button.bounding_box()
        if box:
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, box


def test_presentation_mode_at_1024_pixels(server, browser, expected):
    width = 1024
    page = new_tab(browser, width, 768)
    page.goto(f"{server}/lecture?step=2&present=1")
    page.get_by_text("Step 2 of", exact=False).first.wait_for()
    _settle(page)
    assert expected[1] in _body(page)
    sidebar = page.locator('[data-testid="stSidebar"]').bounding_box()  # folded away: off the screen
    assert sidebar is None or sidebar["x"] + sidebar["width"] <= 1 or sidebar["width"] <= 1, sidebar
    _fits(page, width)
    # Next keeps presentation mode in the link
    page.get_by_role("button", name="Next").click()
    page.get_by_text("Step 3 of", exact=False).first.wait_for()
    _settle(page)
    assert "present=1" in page.url and "step=3" in page.url
    _fits(page, width)
    # the last step: plain and soft-mask PGD side by side, in two columns
    page.goto(f"{server}/lecture?step={len(lecture.STEPS)}&present=1")
    page.get_by_text(f"Step {len(lecture.STEPS)} of", exact=False).first.wait_for()
    _settle(page, 2)
    assert expected[-1] in _body(page)
    _fits(page, width)
    _save(page, "presentation.png", full=True)
    # another page keeps it too, with its images at 384 pixels or more
    page.goto(f"{server}/?model=at-cas&steps=10&img={lecture.IMAGE}&present=1")  # the Attack Lab
    page.get_by_text("Result: PGD", exact=False).first.wait_for()
    _settle(page, 2)
    assert "present=1" in page.url
    _fits(page, width)
    # the sidebar opens on demand; a page chosen there stays in presentation mode
    page.locator('[data-testid="stExpandSidebarButton"]').first.click()
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Robustness").click()
    page.get_by_text("Why a CAS model needs adaptive attacks").first.wait_for()
    page.wait_for_timeout(1500)
    assert "present=1" in page.url and page.get_by_role("switch", name="Presentation mode").is_checked()
    page.close()


def test_attack_lab_fits_1024_pixels_without_presentation_mode(server, browser):
    """The everyday layout on a projector-sized window: the three images side by side without touching,
    and the Random button's label whole (not cut off with an ellipsis)."""
    width = 1024
    page = new_tab(browser, width, 768)
    page.goto(f"{server}/?model=at-cas&steps=10&img={lecture.IMAGE}")
    page.get_by_text("Result: PGD", exact=False).first.wait_for()
    _settle(page, 2)
    _fits(page, width, min_image=120)
    clipped = page.evaluate("""[...document.querySelectorAll('[data-testid="stMain"] button')]
        .filter(b => b.innerText.trim().endsWith('Random') || b.innerText.includes('R…'))
        .map(b => [...b.querySelectorAll('p, span, div')].some(e => e.scrollWidth > e.clientWidth + 1))""")
    assert clipped and not any(clipped), clipped
    page.close()


STEP_CHARTS = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2}  # Plotly charts each step draws


@pytest.mark.parametrize("width", [1024, 1440])
def test_step_pictures_at_1024_and_1440_pixels(server, browser, expected, width):
    """Every step's picture whole: its charts drawn inside the window, every legend entry a caption names
    on the page, nothing wider than the window, the claim's sentence shown."""
    page = new_tab(browser, width, 900)
    for step in range(1, len(lecture.STEPS) + 1):
        page.goto(f"{server}/lecture?step={step}")
        page.get_by_text(f"Step {step} of", exact=False).first.wait_for()
        _settle(page, STEP_CHARTS[step])
        body = _body(page)
        assert "Traceback" not in body and "does not hold" not in body, step
        assert expected[step - 1] in body, step
        assert page.evaluate("document.documentElement.scrollWidth") <= width, step
        charts = page.locator('[data-testid="stPlotlyChart"]')
        assert charts.count() == STEP_CHARTS[step], step
        for i in range(charts.count()):
            box = charts.nth(i).bounding_box()
            assert box and box["width"] > 300 and box["x"] + box["width"] <= width + 1, (step, box)
        legend = page.evaluate("""[...document.querySelectorAll('.legendtext')].map(e => e.textContent)""")
        for word, trace in (("Orange triangles", "switched on by the attack only"),
                            ("Purple", "silenced by the mask"), ("Dotted line", "switched-on line")):
            if word in body and step != 5:
                assert any(t.startswith(trace) or (trace == "switched on by the attack only"
                                                   and t.startswith("pass the mask")) for t in legend), (step, word)
        save_png(page, [ARTIFACTS / f"lecture_step{step}_{width}.png"], True)
    page.close()


def test_attack_lab_by_its_path_and_from_the_lecture(server, browser):
    """``/attack_lab`` opens the Attack Lab (no "Page not found"); the lecture's last step opens it on the
    lecture's image, model and threshold, and says so."""
    page = new_tab(browser, 1280, 900)
    page.goto(f"{server}/attack_lab")
    page.get_by_text("Result:", exact=False).first.wait_for()
    _settle(page, 2)
    body = _body(page)
    assert "Page not found" not in body and "Attack Lab" in body
    page.goto(f"{server}/lecture?step={len(lecture.STEPS)}")
    page.get_by_text(f"Step {len(lecture.STEPS)} of", exact=False).first.wait_for()
    _settle(page, 2)
    page.get_by_role("button", name="Continue in the Attack Lab").click()
    page.get_by_text("Continuing the lecture", exact=False).first.wait_for()
    _settle(page, 1)  # the probabilities; of the channel charts, the first module's tab is the hidden one
    page.locator(".js-plotly-plot").last.wait_for()
    page.wait_for_timeout(1500)
    body = _body(page)
    assert f"#{lecture.IMAGE}" in body and "at-cas" in body and "10% switched-on" in body
    assert "still fall to it" in body  # what plain PGD's accuracy on the card means
    _save(page, "attack_lab_from_lecture.png", full=True)
    page.close()
