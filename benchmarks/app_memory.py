"""Memory over a long session: many attacks through the Attack Lab's cached path in one process.

    python benchmarks/app_memory.py [--attacks 200] [--steps 3] [--model at-cas]

One AppTest session of the real app (``app/main.py``, the bundled models or ``$CAS_PRETRAINED_DIR``) gets
a new image and a new attack on every run, so every run computes and keeps a new result, as a visitor
clicking through the gallery would. It prints the process's resident memory (RSS) after a warm-up and
then every 20 attacks, the number of results the session keeps, and the growth over the run: once the
session's result store is full (``app.common.compute.STORES``), memory must stay flat.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path

import app  # noqa: F401,E402 - PyTorch's threads wait as the app's do (app/__init__.py), set before torch loads

from streamlit.testing.v1 import AppTest

from app.common import compute

ROOT = Path(__file__).resolve().parent.parent

ATTACKS = ("pgd", "fgsm", "soft_mask_pgd", "cw")  # cycled, each on a new image


def rss_mib() -> float:
    """Resident memory of this process in MiB (peak RSS where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure() -> float:
    gc.collect()
    return rss_mib()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="attacks before the first measurement")
    ap.add_argument("--steps", type=int, default=3, help="steps of the iterative attacks")
    ap.add_argument("--model", default="at-cas")
    a = ap.parse_args(argv)

    start_rss = measure()
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=600)
    at.query_params.update({"model": a.model, "steps": str(a.steps), "img": "0"})
    t0 = time.perf_counter()
    at.run()
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].value}")
    print(f"RSS at start {start_rss:.0f} MiB, after the first page {measure():.0f} MiB "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"{'attacks':>8} {'RSS MiB':>8} {'results kept':>13} {'s/attack':>9}")
    rows = []
    t_last = time.perf_counter()
    for i in range(1, a.attacks + 1):
        at.selectbox(key="lab_attack").set_value(ATTACKS[i % len(ATTACKS)])
        at.number_input(key="lab_idx").set_value(i)
        at.run()
        if at.exception:
            raise SystemExit(f"attack {i} failed: {at.exception[0].value}")
        if i == a.warmup or (i > a.warmup and i % 20 == 0) or i == a.attacks:
            now = time.perf_counter()
            rss = measure()
            kept = len(at.session_state[compute.store_key("lab")])
            steps_done = i - (rows[-1][0] if rows else 0)
            rows.append((i, rss))
            print(f"{i:>8} {rss:>8.0f} {kept:>13} {(now - t_last) / steps_done:>9.2f}", flush=True)
            t_last = now
    (w, rss_w), (n, rss_n) = rows[0], rows[-1]
    half = next(r for r in rows if r[0] >= (w + n) // 2)
    print(f"computed {at.session_state['_lab_computations']} results; the session keeps "
          f"at most {compute.STORES['lab']}")
    print(f"growth from attack {w} to {n}: {rss_n - rss_w:+.1f} MiB "
          f"({(rss_n - rss_w) * 1024 / (n - w):+.1f} KiB per attack); "
          f"second half ({half[0]} to {n}): {rss_n - half[1]:+.1f} MiB")


if __name__ == "__main__":
    main()
