"""The README tour's screenshots of the Attack Lab, Compare and Channel statistics, taken in Chromium on
the bundled models (the Lecture's come from ``CAS_SCREENSHOTS=1 pytest tests/test_lecture_browser.py``).

    python -m scripts.screenshots [--out docs/screenshots]

Starts the app as ``scripts/app.sh`` does (on a free local port), opens each page with the settings in
its link, waits for every chart and saves a palette PNG (at most 450 KB each).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.browser import chromium, new_tab, save_png, serve, settle, wait_idle

ROOT = Path(__file__).resolve().parent.parent

MAX_BYTES = 450_000


def shots() -> list[tuple[str, str, str, int]]:
    """(file, link, text that shows the page has its result, Plotly charts to wait for). Compare shows the
    lecture's image (where PGD fools ``std`` and ``at`` but not plain-attacked ``at-cas``), found in this
    CIFAR-10 copy as the Lecture page finds it."""
    from app.common import lecture_story as lecture
    from cas import data

    x, y = data.load("test")
    image = lecture.find_image(x.numpy(), y.numpy())
    return [("attack_lab_soft_mask.png", "/?model=at-cas&attack=soft_mask_pgd", "Result: Soft-mask PGD", 2),
            ("compare.png", f"/compare?models=std,at,at-cas&img={image or 0}",
             "each model attacked on its own", 6)]


def channel_statistics(page, url: str) -> None:
    """Channel statistics needs a click: compute the page's defaults (64 airplanes, PGD-10)."""
    page.goto(f"{url}/channel_stats")
    page.get_by_text("Compute statistics").first.wait_for()
    wait_idle(page)  # let the first run finish before clicking
    page.get_by_role("button", name="Compute statistics").click()
    page.get_by_text("Do the paper's claims hold here?").first.wait_for()
    settle(page, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNG files")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, chromium() as browser:
        env = {"CAS_RUNS_DIR": str(Path(tmp) / "runs")}  # the bundled models only
        with serve(env, Path(tmp) / "server.log") as url:
            page = new_tab(browser, 1440, 1000)
            for name, link, ready, charts in shots():
                page.goto(url + link)
                page.get_by_text(ready, exact=False).first.wait_for()
                settle(page, charts)
                size = save_png(page, [a.out / name], full=True)
                print(f"{a.out / name}: {size:,} bytes")
            channel_statistics(page, url)
            size = save_png(page, [a.out / "channel_stats.png"], full=True)
            print(f"{a.out / 'channel_stats.png'}: {size:,} bytes")
    big = [p.name for p in a.out.glob("*.png") if p.stat().st_size > MAX_BYTES]
    if big:
        sys.exit(f"too large for the README (over {MAX_BYTES:,} bytes): {', '.join(big)}")


if __name__ == "__main__":
    main()
