"""CPU latency of attacks on one image for the bundled architecture (ResNet-18 width 32 with CAS).

    python benchmarks/attack_latency.py [--model at-cas] [--repeats 10]

Uses a bundled model when one is named and installed, else a freshly initialised one of the same
architecture (latency does not depend on the weights). Prints the median and 90th percentile.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import cas


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="bundled name or checkpoint path")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model:
        model = cas.load_model(a.model)
        label = a.model
    else:
        torch.manual_seed(0)
        model = cas.create_model("resnet18", width=32, cas=True).eval()
        label = "resnet18 width 32 + CAS (random weights)"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own answer, so that every attack has work to do
    print(f"model: {label}; threads: {torch.get_num_threads()}")
    print("| attack | median s | p90 s |")
    print("|---|---|---|")
    for name, kw in [("fgsm", {}), ("pgd", {"steps": 20}), ("cw", {"steps": 30}),
                     ("soft_mask_pgd", {"steps": 20}), ("square", {"queries": 1000})]:
        if cas.ATTACKS[name].needs_cas and not model.has_cas:
            continue
        cas.run_attack(name, model, x, y, **kw)  # warm-up
        times = []
        for r in range(a.repeats):
            t = time.perf_counter()
            cas.run_attack(name, model, x, y, seed=r, **kw)
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"| {name} {kw} | {statistics.median(times):.3f} | {times[int(0.9 * (len(times) - 1))]:.3f} |")


if __name__ == "__main__":
    main()
