"""The app under load: several visitors in Chromium clicking through the Attack Lab at the same time.

    python -m benchmarks.app_load [--sessions 4] [--clicks 5] [--attack pgd] [--steps N]

Starts the app (``python -m app.serve``, as ``scripts/app.sh`` does) on a free local port with the bundled
models (or ``$CAS_PRETRAINED_DIR``), opens one browser session per visitor, each on its own test image,
waits until every one shows its first result, then has them all click the image number's "+" button
``--clicks`` times at once. Every click runs a new attack; its latency is the time from the click until
the page shows the new result and the run has finished. Prints the first-page time, the median and 95th
percentile click latency, and every error: exceptions drawn on a page and tracebacks in the server log.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


from tests.browser import CHROMIUM, CHROMIUM_ARGS, serve


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def _finished(page, index: int) -> None:
    """Wait until the page shows the result for test image ``index`` and its run has ended."""
    await page.get_by_text(f"on CIFAR-10 test image #{index} (", exact=False).first.wait_for()
    await page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached")


async def visitor(browser, url: str, number: int, start: int, clicks: int, query: str, timeout_ms: int,
                  ready: asyncio.Barrier, report: dict) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    errors = report["errors"]
    try:
        t0 = time.perf_counter()
        await page.goto(f"{url}/?img={start}{query}")
        await _finished(page, start)
        report["first_page"].append(time.perf_counter() - t0)
        await ready.wait()  # every visitor starts clicking at the same moment
        step_up = (page.locator('[data-testid="stNumberInput"]').filter(has_text="Test image number")
                   .locator('[data-testid="stNumberInputStepUp"]'))
        for k in range(1, clicks + 1):
            t = time.perf_counter()
            await step_up.click()
            await _finished(page, start + k)
            report["latency"].append(time.perf_counter() - t)
            shown = await page.locator('[data-testid="stException"]').all_inner_texts()
            errors.extend(f"session {number}, click {k}: {text.strip()[:300]}" for text in shown)
    except Exception as e:  # noqa: BLE001  (a timeout or a broken page: counted; the others go on)
        errors.append(f"session {number}: {type(e).__name__}: {str(e).splitlines()[0]}")
        ready.abort()
    finally:
        await context.close()


async def drive(url: str, a) -> dict:
    from playwright.async_api import async_playwright

    report = {"first_page": [], "latency": [], "errors": []}
    query = f"&model={a.model}&attack={a.attack}" + (f"&steps={a.steps}" if a.steps else "")
    ready = asyncio.Barrier(a.sessions)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*(visitor(browser, url, s, 100 * (s + 1), a.clicks, query, a.timeout * 1000,
                                           ready, report) for s in range(a.sessions)))
        finally:
            await browser.close()
    return report


def server_errors(log: Path) -> list[str]:
    """Tracebacks and uncaught exceptions in the server log (their last line each)."""
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback") or "Uncaught" in line:
            tail = next((lines[j] for j in range(i + 1, len(lines))
                         if lines[j] and not lines[j].startswith((" ", "Traceback"))), line)
            found.append(tail.strip()[:300])
    return found


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=4, help="concurrent browser sessions")
    ap.add_argument("--clicks", type=int, default=5, help="attack clicks per session")
    ap.add_argument("--model", default="at-cas")
    ap.add_argument("--attack", default="pgd")
    ap.add_argument("--steps", type=int, default=None, help="attack steps (default: the page's)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds a page may take for one step")
    ap.add_argument("--log", help="keep the server log here (default: a temporary file)")
    a = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (set CAS_CHROMIUM)")

    log = Path(a.log) if a.log else Path(tempfile.mkdtemp(prefix="cas-load-")) / "server.log"
    t0 = time.perf_counter()
    with serve({}, log) as url:
        print(f"server up in {time.perf_counter() - t0:.1f} s at {url}; {a.sessions} sessions x "
              f"{a.clicks} clicks, {a.attack}" + (f", {a.steps} steps" if a.steps else ""), flush=True)
        t1 = time.perf_counter()
        report = asyncio.run(drive(url, a))
        wall = time.perf_counter() - t1
    lat, first = report["latency"], report["first_page"]
    errors = report["errors"] + [f"server log: {e}" for e in server_errors(log)]
    print(f"first page (incl. first attack): median {statistics.median(first):.2f} s, "
          f"max {max(first):.2f} s" if first else "no page loaded")
    if lat:
        print(f"attack click latency over {len(lat)} clicks: p50 {percentile(lat, 50):.2f} s, "
              f"p95 {percentile(lat, 95):.2f} s, max {max(lat):.2f} s, mean {statistics.mean(lat):.2f} s")
    print(f"wall time {wall:.1f} s; errors: {len(errors)}")
    for e in errors:
        print(f"  {e}")
    print(f"server log: {log}")


if __name__ == "__main__":
    main()
