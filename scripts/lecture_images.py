"""Choose the Lecture page's test image: ``python scripts/lecture_images.py [--n 400] [--want 6]``.

Screens the first N test images of the fixed shuffle with batched attacks on the bundled models (std
right on the clean image and wrong under PGD, AT right on the clean image, AT+CAS right under plain PGD
and wrong under soft-mask PGD), then runs every lecture step on each survivor exactly as the page does
(``app.common.lecture_story.run_all``) with seeds 0, 1 and 2, with the attacks' gradients in bf16 (where the CPU
has it) and in fp32, and keeps the images on which every step's claim holds in all of them. Prints them,
best first: ranked by the smallest of the margins of the prediction claims (the true class's probability
where the model must stay right, one minus it where it must be fooled).
"""
from __future__ import annotations

import argparse
import os
import sys


import numpy as np
import torch

import cas
from app.common import image_attack
from app.common import lecture_story as lecture
from cas import data as cas_data


def screen(models: dict, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> np.ndarray:
    """Which images pass the prediction claims under one batched run of each attack (seed 0)."""
    def preds(model, attack=None):
        out = []
        for i in range(0, len(y), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            if attack:
                xb = cas.run_attack(attack, model, xb, yb, eps=8 / 255, steps=20, step_size=2 / 255)
            with torch.no_grad():
                out.append(model(xb).argmax(1))
        return torch.cat(out)

    std, at, at_cas = models["std"], models["at"], models["at-cas"]
    ok = (preds(std) == y) & (preds(std, "pgd") != y) & (preds(at) == y)
    ok &= (preds(at_cas) == y) & (preds(at_cas, "pgd") == y) & (preds(at_cas, "soft_mask_pgd") != y)
    return ok.numpy()


def margin(results: dict) -> float:
    """The smallest margin of the prediction claims on one run of the lecture."""
    def p(run, row):
        r = results[run]
        return float(r.probs[row, r.label])
    return min(p("std_clean", 0), 1 - p("std_pgd", 1), p("cas_pgd", 1), 1 - p("cas_soft", 1))


def check(models: dict, x: np.ndarray, label: int) -> float | None:
    """The image's smallest margin over seeds and precisions, or None if a claim fails in any of them."""
    worst = 1.0
    for fp32 in ("", "1"):
        os.environ["CAS_FP32"] = fp32
        for seed in (0, 1, 2):
            results = {}
            for run, (name, choice) in lecture.RUNS.items():
                if choice.attack != image_attack.NONE:
                    choice = image_attack.AttackChoice(choice.attack, **{**dict(choice.values), "seed": seed})
                results[run] = image_attack.attack_image(models[name], x, choice, label)
            failed = [i for i in range(1, len(lecture.STEPS) + 1) if not lecture.claim(i, results)[0]]
            if failed:
                print(f"  step {failed[0]} fails (seed {seed}{', fp32' if fp32 else ''})", file=sys.stderr)
                os.environ["CAS_FP32"] = ""
                return None
            worst = min(worst, margin(results))
    os.environ["CAS_FP32"] = ""
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="test images to screen, in the fixed shuffle")
    ap.add_argument("--want", type=int, default=6, help="stop after this many images pass every check")
    a = ap.parse_args()
    x_all, y_all = (t.numpy() for t in cas_data.load("test"))
    idx = cas_data.shuffled_indices(len(y_all)).numpy()[:a.n]
    models = {name: cas.load_model(name) for name in ("std", "at", "at-cas")}
    x = torch.from_numpy(x_all[idx]).float() / 255
    y = torch.from_numpy(y_all[idx]).long()
    survivors = idx[screen(models, x, y)]
    print(f"{len(survivors)} of {a.n} pass the batched screen", file=sys.stderr)
    found = []
    for i in survivors:
        print(f"#{i} ({cas.CLASSES[y_all[i]]})", file=sys.stderr)
        m = check(models, x_all[i], int(y_all[i]))
        if m is not None:
            found.append((m, int(i)))
            print(f"#{i} ({cas.CLASSES[y_all[i]]}): every claim holds, smallest margin {m:.2f}", file=sys.stderr)
            if len(found) >= a.want:
                break
    for m, i in sorted(found, reverse=True):
        print(f"{i}\t{cas.CLASSES[y_all[i]]}\t{m:.3f}")


if __name__ == "__main__":
    main()
