"""How long the Attack Lab takes to update after a click: PGD-20 on one image, the channel analysis and every
figure of the page, on the CPU, for a ResNet-18 width-32 model with CAS.

    python benchmarks/app_latency.py [--checkpoint PATH] [--runs 10] [--steps 20] [--attack pgd]

Without ``--checkpoint`` the model has random weights (the timing does not depend on them). It calls the
same functions the page calls (``app.common.lab`` and ``app.common.figures``), without Streamlit, and
prints the median and 90th percentile in seconds and their ratio to the 1 s target.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app sets it (see app/main.py)

import numpy as np
import torch

import cas
from app.common import figures, images, lab

TARGET_S = 1.0


def one_update(model, x: np.ndarray, label: int, choice: lab.AttackChoice) -> dict:
    """Everything the Attack Lab computes after a click, with the time of each part."""
    t0 = time.perf_counter()
    result = lab.attack_image(model, x, choice, label)
    t1 = time.perf_counter()
    aux = [(m.name, m.aux_probs) for m in result.modules if m.aux_probs is not None]
    figs = [figures.probability_figure(result.probs, aux)]
    for view in result.modules:
        figs.append(figures.channel_figure(view, lab.channel_order(view, "natural")))
        for stage in (view.before, view.after):
            lab.module_summary(stage[0], 0.01), lab.module_summary(stage[1], 0.01)
    images.png_bytes(result.x_adv), images.npy_bytes(result.x_adv)
    lab.channel_table(result).to_csv(index=False)
    t2 = time.perf_counter()
    for f in figs:  # what Streamlit sends to the browser
        f.to_json()
    t3 = time.perf_counter()
    return {"attack": t1 - t0, "figures": t2 - t1, "serialise": t3 - t2, "total": t3 - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint",
                    help="a CAS Lab checkpoint (default: ResNet-18 width 32 + CAS, random weights)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--attack", default="pgd", choices=[a for a in lab.LAB_ATTACKS if a != "none"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        model, _ = cas.load_checkpoint(a.checkpoint)
    else:
        torch.manual_seed(0)
        model = cas.create_model("resnet18", width=32).eval()
    try:
        x_all, y_all = cas.data.load("test")
        x_all, y_all = x_all.numpy(), y_all.numpy()
    except cas.data.DataNotFoundError:
        x_all = np.random.default_rng(0).integers(0, 256, (a.runs + 1, 3, 32, 32), dtype=np.uint8)
        y_all = np.zeros(a.runs + 1, dtype=np.int64)
    choice = lab.AttackChoice(attack=a.attack, steps=a.steps)
    one_update(model, x_all[0], int(y_all[0]), choice)  # warm-up (first calls allocate)
    rows = [one_update(model, x_all[i], int(y_all[i]), choice) for i in range(1, a.runs + 1)]
    totals = sorted(r["total"] for r in rows)
    median = statistics.median(totals)
    p90 = totals[min(len(totals) - 1, int(round(0.9 * (len(totals) - 1))))]
    parts = {k: statistics.median(r[k] for r in rows) for k in ("attack", "figures", "serialise")}
    k = model.cas[model.cas_points[-1]].channels if model.has_cas else "-"
    print(f"model: {model.arch} width {model.arch_kwargs.get('width')}, CAS {model.has_cas} ({k} channels "
          f"at the last CAS point); attack: {choice.describe()}; torch threads: {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs")
    print(f"median part times (s): attack {parts['attack']:.3f}, analysis+figures {parts['figures']:.3f}, "
          f"serialisation {parts['serialise']:.3f}")
    print(f"update after a click over {a.runs} runs: median {median:.3f} s, p90 {p90:.3f} s")
    print(f"ratio to the {TARGET_S:g} s target: median {median / TARGET_S:.2f}, p90 {p90 / TARGET_S:.2f} "
          f"({'within' if p90 <= TARGET_S else 'above'} target)")


if __name__ == "__main__":
    main()
