"""The app's speed on the CPU, the fp32 path and the fast path side by side, in one run.

    python -m benchmarks.app_speed [--runs 20] [--no-cold-start]

* **fp32 path** (what the app did before): fp32 everywhere, every piece of work on the process's
  default threads, NCHW models, the accuracy-vs-ε curve as one evaluation per ε.
* **fast path** (what the app does now): attack gradients under bf16 autocast with channels_last
  models where the CPU does bf16 natively (every point judged in fp32), one intra-op thread for a
  single image's attack, every core for batch work, the ε-curve as one batched job in which an image
  leaves the attack once the model is fooled (``AttackSettings.until_fooled``).

Figures, on the bundled models (``std``, ``at``, ``at-cas``):
1. click latency: the Attack Lab's whole update after a click (PGD-20 on one test image, the channel
   analysis, every figure and its serialisation), ``at-cas``; median and p90, and the median of each
   part (attack, analysis + figures, serialisation);
2. Channel statistics: 32 test images x 3 models, PGD-10 (the page's defaults);
3. the accuracy-vs-ε curve: 32 images, ε in {0, 2, 4, 8, 16}/255, PGD-10 on each model and soft-mask
   PGD-10 on ``at-cas`` (the Robustness page's defaults);
4. cold start: from the server answering its health check to the first page (Attack Lab on
   ``at-cas``, attack done) drawn in Chromium; needs Chromium (``--no-cold-start`` skips it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import app  # noqa: F401,E402 - PyTorch's threads wait as the app's do (app/__init__.py), set before torch loads

import numpy as np
import torch

import cas
from app.common import figures, image_attack, images
from cas import data as cdata
from cas import stats as cas_stats
from cas.cli import HelpFormatter
from cas.evaluate import accuracy_vs_eps, evaluate
from cas.precision import all_cores, fast_bf16, threads

MODELS = ("std", "at", "at-cas")
TARGETS = {"click median": 0.25, "Channel statistics": 3.0, "ε-curve": 6.0, "cold start": 3.0}
EPS = (0, 2, 4, 8, 16)


@contextlib.contextmanager
def fp32_path():
    """Today's fp32 path: no bf16, default threads for single images, NCHW models."""
    os.environ["CAS_FP32"] = "1"
    saved, image_attack.SINGLE_IMAGE_THREADS = image_attack.SINGLE_IMAGE_THREADS, None
    try:
        yield
    finally:
        del os.environ["CAS_FP32"]
        image_attack.SINGLE_IMAGE_THREADS = saved


def load(name: str, fast: bool):
    model = cas.load_model(name)
    if fast and fast_bf16("cpu"):  # as the app's loader prepares models
        model = model.to(memory_format=torch.channels_last)
    return model


def one_update(model, x: np.ndarray, label: int, choice: image_attack.AttackChoice) -> dict:
    """Everything the Attack Lab computes after a click, with the time of each part (seconds)."""
    t0 = time.perf_counter()
    result = image_attack.attack_image(model, x, choice, label)
    t1 = time.perf_counter()
    aux = [(m.name, m.aux_probs) for m in result.modules if m.aux_probs is not None]
    figs = [figures.probability_figure(result.probs, aux)]
    for view in result.modules:
        figs.append(figures.channel_figure(view, image_attack.channel_order(view, "natural")))
        for stage in (view.before, view.after):
            image_attack.module_summary(stage[0], 0.01), image_attack.module_summary(stage[1], 0.01)
    images.png_bytes(result.x_adv), images.npy_bytes(result.x_adv)
    image_attack.channel_table(result).to_csv(index=False)
    t2 = time.perf_counter()
    for f in figs:  # what Streamlit sends to the browser
        f.to_json()
    t3 = time.perf_counter()
    return {"attack": t1 - t0, "figures": t2 - t1, "serialise": t3 - t2, "total": t3 - t0}


def click(model, x_all, y_all, runs: int) -> dict[str, float]:
    """The click's median and p90 over ``runs`` test images, and each part's median."""
    choice = image_attack.AttackChoice(attack="pgd", steps=20)
    one_update(model, x_all[0], int(y_all[0]), choice)  # warm-up (first calls allocate)
    rows = [one_update(model, x_all[i], int(y_all[i]), choice) for i in range(1, runs + 1)]
    totals = sorted(r["total"] for r in rows)
    out = {"click median": statistics.median(totals),
           "click p90": totals[min(len(totals) - 1, round(0.9 * (len(totals) - 1)))]}
    out.update({f"click: {part}": statistics.median(r[part] for r in rows)
                for part in ("attack", "figures", "serialise")})
    return out


def channel_stats(models, x, y, fast: bool) -> float:
    t = time.perf_counter()
    with threads(all_cores() if fast else None):
        for m in models.values():
            cas_stats.channel_statistics(m, x, y, "pgd", cas.AttackSettings(eps=8 / 255, steps=10), batch_size=64)
    return time.perf_counter() - t


def eps_curve(models, x, y, fast: bool) -> float:
    t = time.perf_counter()
    for m in models.values():
        for atk in ["pgd"] + (["soft_mask_pgd"] if m.has_cas else []):
            if fast:
                with threads(all_cores()):
                    accuracy_vs_eps(m, x, y, atk, [e / 255 for e in EPS], steps=10)
            else:  # one evaluation per ε, as the page did
                for e in EPS:
                    r = evaluate(m, x, y, [atk] if e else [], eps=e / 255, device="cpu", batch_size=64,
                                 overrides={atk: {"steps": 10, "step_size": None, "until_fooled": False}})
                    r.accuracy.get(cas.ATTACKS[atk].card_key)
    return time.perf_counter() - t


def cold_start(fp32: bool) -> float:
    """Seconds from the server's health check answering to the first page's attack result drawn."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS, serve

    env = {"CAS_FP32": "1" if fp32 else "0"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        with serve(env, Path("/tmp") / "cas-cold-start.log") as url:
            t0 = time.perf_counter()  # the server is up, the browser is open: the page is asked for
            page.goto(url + "/")
            page.get_by_text("The attack succeeded").first.wait_for(timeout=120_000)
            seconds = time.perf_counter() - t0
        browser.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="clicks timed per path")
    ap.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the first page in Chromium")
    a = ap.parse_args()
    x_all, y_all = (t.numpy() for t in cdata.load("test"))
    x, y = cdata.test_subset(32)
    rows = []
    for fast in (False, True):
        ctx = contextlib.nullcontext() if fast else fp32_path()
        with ctx:
            models = {n: load(n, fast) for n in MODELS}
            row = {**click(models["at-cas"], x_all, y_all, a.runs),
                   "Channel statistics": channel_stats(models, x, y, fast),
                   "ε-curve": eps_curve(models, x, y, fast)}
        if a.cold_start:
            row["cold start"] = cold_start(fp32=not fast)
        rows.append(row)
    print(f"CPU: {all_cores()} cores, bf16 native: {fast_bf16('cpu')}; torch {torch.__version__}; "
          f"models: bundled {', '.join(MODELS)}")
    print("| figure | fp32 path (s) | fast path (s) | ratio | target (s) |")
    print("|---|---|---|---|---|")
    for key in rows[0]:
        old, new = rows[0][key], rows[1][key]
        print(f"| {key} | {old:.3f} | {new:.3f} | {old / new:.2f}x | {TARGETS.get(key, '')} |")


if __name__ == "__main__":
    main()
