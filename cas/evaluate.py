"""Robustness evaluation: ``python -m cas.evaluate MODEL [--n 10000] [--write-card]``.

Accuracy on clean images and under each attack (Linf, eps 8/255 by default), plus the per-image worst
case (an image counts as robust only if it is classified correctly clean and under every attack run).
Sanity flags are printed loudly: robust accuracy above clean accuracy, a weaker attack beating a
stronger one, and a large gap between plain and CAS-adaptive PGD (gradient masking).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .attacks import ATTACKS, AttackSettings, run_attack
from .cli import HelpFormatter

DEFAULT_ATTACKS = ("fgsm", "pgd", "cw", "joint_pgd", "soft_mask_pgd", "autoattack", "adaptive_autoattack")
EVALUATED = [name for name, spec in ATTACKS.items() if spec.card_key]  # attacks with an evaluation preset
# card key -> column header, in table order
COLUMNS = {"clean": "clean", **{s.card_key: s.column for s in ATTACKS.values() if s.card_key},
           "adaptive_pgd20": "adaptive PGD-20 (lower)", "worst_case": "worst case"}
MASKING_GAP = 5.0  # points between plain and adaptive PGD that count as gradient masking


@dataclass
class EvalResult:
    n: int
    accuracy: dict[str, float] = field(default_factory=dict)  # card key -> percent
    counts: dict[str, int] = field(default_factory=dict)  # card key -> images evaluated
    seconds: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)  # card key -> standard error, percent points
    flags: list[str] = field(default_factory=list)


def evaluate(model, x_u8: torch.Tensor, y: torch.Tensor, attacks=DEFAULT_ATTACKS, eps: float = 8 / 255,
             batch_size: int = 500, device=None, limits: dict[str, int] | None = None, seed: int = 0,
             progress=None, overrides: dict[str, dict] | None = None, amp: bool = True,
             autoattack_version: str = "standard") -> EvalResult:
    """Accuracy (percent) clean and under each attack on uint8 images ``x_u8`` (N, 3, 32, 32).

    ``limits`` caps the number of images for some attacks (e.g. ``{"autoattack": 1000}``: the first
    1,000). ``overrides`` changes an attack's preset settings (e.g. ``{"square": {"queries": 500}}``).
    The worst case is taken over the images every attack saw. With ``amp``, attacks run under bf16
    autocast where the hardware does bf16 natively (CUDA, AVX-512 BF16 CPUs); every accuracy is
    judged in fp32. Attacks meant for CAS models are
    skipped for models without CAS. ``autoattack_version``: "standard" or "apgd" (its APGD-CE and
    APGD-T only, see :func:`cas.attacks.autoattack`). ``progress(label, done, total)`` reports batches."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    limits = limits or {}
    _check_batch(batch_size)
    unknown = [a for a in attacks if a not in ATTACKS or not ATTACKS[a].card_key]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(map(str, unknown))}; choose from {', '.join(EVALUATED)}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in limits.values()):
        raise ValueError(f"limits must be positive whole numbers of images, got {limits}")
    attacks = [a for a in attacks if not (ATTACKS[a].needs_cas and not getattr(model, "has_cas", False))]
    n = x_u8.shape[0]
    correct = {"clean": torch.zeros(n, dtype=torch.bool)}
    seen = {"clean": n}
    res = EvalResult(n=n)
    for name in ["clean", *attacks]:
        key = "clean" if name == "clean" else ATTACKS[name].card_key
        m = min(n, limits.get(name, n))
        seen[key] = m
        correct.setdefault(key, torch.zeros(n, dtype=torch.bool))
        t0 = time.time()
        for i in range(0, m, batch_size):
            xb = x_u8[i:min(i + batch_size, m)].to(device).float() / 255
            yb = y[i:min(i + batch_size, m)].to(device)
            if name != "clean":
                s = AttackSettings(**{"eps": eps, "seed": seed + i, "amp": amp, "until_fooled": True,
                                      **ATTACKS[name].preset, **(overrides or {}).get(name, {})})
                extra = {"version": autoattack_version} if name == "autoattack" else {}
                xb = run_attack(name, model, xb, yb, s, **extra)
            with torch.no_grad():
                correct[key][i:i + len(yb)] = (model(xb).argmax(1) == yb).cpu()
            if progress:
                progress(key, min(i + batch_size, m), m)
        res.seconds[key] = round(time.time() - t0, 2)
        res.accuracy[key] = round(100 * float(correct[key][:m].float().mean()), 2)
        res.counts[key] = m
    adaptive = [k for k in ("joint_pgd20", "soft_mask_pgd20") if k in res.accuracy]
    if adaptive:
        res.accuracy["adaptive_pgd20"] = min(res.accuracy[k] for k in adaptive)
    common = min(seen.values())
    worst = torch.ones(common, dtype=torch.bool)
    for key in seen:
        worst &= correct[key][:common]
    res.accuracy["worst_case"] = round(100 * float(worst.float().mean()), 2)
    res.counts["worst_case"] = common
    if adaptive:
        res.counts["adaptive_pgd20"] = min(res.counts[k] for k in adaptive)
    res.stderr = {k: standard_error(v, res.counts.get(k, n)) for k, v in res.accuracy.items()}
    same_images = {k: round(100 * float(correct[k][:common].float().mean()), 2) for k in seen}
    res.flags = sanity_flags(res.accuracy, getattr(model, "has_cas", False), same_images, common)
    return res


def accuracy_vs_eps(model, x_u8: torch.Tensor, y: torch.Tensor, attack: str, eps_values, steps: int = 10,
                    batch_size: int = 256, seed: int = 0, amp: bool = True, progress=None) -> list[float]:
    """Accuracy (percent) under ``attack`` at each budget of ``eps_values`` (in input units; 0 means
    clean), as one batched job: every image is paired with every non-zero budget and the pairs are
    attacked together, each with its own budget (step size: the library's automatic rule per budget).
    Gradient attacks only. ``progress(done, total)`` counts image-budget pairs."""
    if attack not in ATTACKS or not ATTACKS[attack].gradient:
        raise ValueError(f"accuracy_vs_eps needs a gradient attack, got {attack!r}")
    _check_batch(batch_size)
    eps_values = [float(e) for e in eps_values]
    n = x_u8.shape[0]
    attacked = [e for e in eps_values if e > 0]
    x = x_u8.float() / 255
    xs, ys = x.repeat(len(attacked), 1, 1, 1), y.repeat(len(attacked))
    budgets = torch.tensor(attacked).repeat_interleave(n)
    correct = torch.zeros(len(ys), dtype=torch.bool)
    for i in range(0, len(ys), batch_size):
        sl = slice(i, i + batch_size)
        s = AttackSettings(eps=budgets[sl], steps=steps, seed=seed + i, amp=amp, until_fooled=True)
        xa = run_attack(attack, model, xs[sl], ys[sl], s)
        with torch.no_grad():
            correct[sl] = model(xa).argmax(1).cpu() == ys[sl]
        if progress:
            progress(min(i + batch_size, len(ys)), len(ys))
    with torch.no_grad():
        clean = 100 * float((model(x).argmax(1) == y).float().mean()) if n else 0.0
    per_eps = correct.view(len(attacked), n).float().mean(1).mul(100).tolist() if attacked else []
    it = iter(per_eps)
    return [round(clean if e == 0 else next(it), 2) for e in eps_values]


def _check_batch(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        raise ValueError(f"batch_size must be a whole number from 1 to 10000, got {batch_size!r}")


def standard_error(percent: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images, in percentage points."""
    p = percent / 100
    return round(100 * (p * (1 - p) / max(n, 1)) ** 0.5, 2)


def sanity_flags(acc: dict[str, float], has_cas: bool, same_images: dict[str, float] | None = None,
                 n_same: int | None = None) -> list[str]:
    """Plain-language warnings about numbers that cannot all be right. ``same_images`` (accuracies on
    the ``n_same`` images every attack saw) is what attacks are compared on when given, so that an attack
    run on fewer images is not compared with one run on more."""
    flags = []
    clean = acc.get("clean")
    for key, v in acc.items():
        if key != "clean" and clean is not None and v > clean + 1e-9:
            flags.append(f"{key} accuracy {v:.2f}% is ABOVE clean accuracy {clean:.2f}%: the attack is "
                         "failing to find adversarial examples (gradient masking?)")
    pair_acc = same_images or acc
    where = f" on the {n_same} images both saw" if same_images and n_same else ""
    ranked = [s for s in ATTACKS.values() if s.strength is not None and s.card_key in pair_acc]
    for weak in ranked:
        for strong in ranked:
            a, b = pair_acc[weak.card_key], pair_acc[strong.card_key]
            if weak.strength < strong.strength and b > a + 1.0:
                flags.append(f"the stronger attack {strong.card_key} ({b:.2f}%) leaves more images correct "
                             f"than the weaker {weak.card_key} ({a:.2f}%){where}")
    if has_cas and "pgd20" in acc and "adaptive_pgd20" in acc:
        gap = acc["pgd20"] - acc["adaptive_pgd20"]
        if gap > MASKING_GAP:
            flags.append(f"gradient masking: plain PGD-20 reports {acc['pgd20']:.2f}% but CAS-adaptive PGD-20 "
                         f"{acc['adaptive_pgd20']:.2f}% ({gap:.1f} points lower). Plain PGD cannot see "
                         "through the argmax mask; trust the adaptive number.")
    return flags


def _curve_budgets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --curve-eps takes numbers separated by commas, got {text!r}") from None
    if not 1 <= len(values) <= 8 or not all(0 <= v <= 64 for v in values):
        raise SystemExit("error: --curve-eps takes 1 to 8 budgets, each between 0 and 64 (/255)")
    return [v / 255 for v in sorted(set(values))]


def _write_text(path, text: str) -> None:
    from pathlib import Path

    from .checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def markdown_table(rows: dict[str, EvalResult]) -> str:
    keys = []
    for r in rows.values():
        keys += [k for k in r.accuracy if k not in keys]
    head = "| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = ""
    for name, r in rows.items():
        cells = [f"{r.accuracy[k]:.2f}" + ("" if r.counts.get(k, r.n) == r.n else f" (n={r.counts[k]})")
                 if k in r.accuracy else "" for k in keys]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main(argv=None):
    from . import data as cdata
    from .checkpoint import CheckpointError, load_checkpoint, resolve, update_card

    ap = argparse.ArgumentParser(prog="python -m cas.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("models", nargs="+", help="bundled model names or checkpoint paths")
    ap.add_argument("--n", type=int, default=10000,
                    help="test images: the first N of a fixed shuffle of the test set (all classes mixed; "
                         "the bundled models' cards use the first 1,000)")
    ap.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                    help=f"comma-separated, from: {', '.join(EVALUATED)}")
    ap.add_argument("--autoattack-n", type=int, default=1000, help="images for AutoAttack and adaptive AutoAttack (first N)")
    ap.add_argument("--square-n", type=int, default=1000, help="images for Square (first N)")
    ap.add_argument("--eps", type=float, default=8.0, help="Linf budget in /255")
    ap.add_argument("--batch-size", type=int, default=500, help="images attacked together")
    ap.add_argument("--data", default=None,
                    help="CIFAR-10 location: a torchvision folder, an image-folder tree or a .tar.xz of one (default: $CAS_DATA or the usual places)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no-amp", dest="amp", action="store_false",
                    help="attack in fp32 (default: bf16 autocast for gradients where the hardware does bf16 "
                         "natively; every accuracy is judged in fp32 either way)")
    ap.add_argument("--autoattack-version", default="standard", choices=["standard", "apgd"],
                    help="standard AutoAttack, or its APGD-CE + APGD-T only (much faster on a CPU)")
    ap.add_argument("--write-card", action="store_true", help="store the accuracies in each checkpoint's card")
    ap.add_argument("--report", default=None, metavar="FILE.html",
                    help="write a self-contained HTML report (one model): card, table with standard errors, "
                         "sanity flags, accuracy-vs-eps curves and the number to trust")
    ap.add_argument("--curve-n", type=int, default=100, help="images for the report's accuracy-vs-eps curves")
    ap.add_argument("--curve-eps", default="0,2,4,8,12",
                    help="the report's budgets in /255, comma-separated (at most 8, each in [0, 64])")
    a = ap.parse_args(argv)
    curve_eps = _curve_budgets(a.curve_eps)
    if a.report and len(a.models) != 1:
        raise SystemExit("error: --report writes one model's report; give exactly one model")
    for flag, v, hi in (("--n", a.n, 10000), ("--autoattack-n", a.autoattack_n, 10000),
                        ("--square-n", a.square_n, 10000), ("--curve-n", a.curve_n, 10000),
                        ("--batch-size", a.batch_size, 10000)):
        if not 1 <= v <= hi:
            raise SystemExit(f"error: {flag} must be between 1 and {hi}, got {v}")
    attacks = [s.strip() for s in a.attacks.split(",") if s.strip()]
    bad = [s for s in attacks if s not in EVALUATED]
    if bad:
        raise SystemExit(f"error: unknown attack(s) {', '.join(bad)}; choose from {', '.join(EVALUATED)}")
    if not (0 < a.eps <= 255):
        raise SystemExit("error: --eps is in /255 and must lie in (0, 255]")
    try:
        x, y = cdata.test_subset(a.n, a.data)
    except cdata.DataNotFoundError as e:
        raise SystemExit(f"error: {e}")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = {}
    for name in a.models:
        try:
            path = resolve(name)
            model, card = load_checkpoint(path, device)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        bar = tqdm(total=0, desc=name, file=sys.stderr, leave=False)

        def progress(key, done, total, bar=bar):
            bar.set_description(f"{name}: {key}")
            bar.total = total
            bar.n = done
            bar.refresh()

        res = evaluate(model, x, y, attacks, eps=a.eps / 255, batch_size=a.batch_size, device=device,
                       limits={"autoattack": a.autoattack_n, "adaptive_autoattack": a.autoattack_n,
                               "square": a.square_n}, progress=progress,
                       amp=a.amp, autoattack_version=a.autoattack_version)
        bar.close()
        rows[name] = res
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}%" for k, v in res.accuracy.items())
              + f"  [{sum(res.seconds.values()):.1f} s]", file=sys.stderr)
        for f in res.flags:
            print(f"\n  !!! SANITY FLAG ({name}): {f}\n", file=sys.stderr)
        if a.report:
            from .report import measure_curves, render

            xc, yc = x[:a.curve_n].to(device), y[:a.curve_n].to(device)
            curves = measure_curves(model, xc, yc, curve_eps, amp=a.amp,
                                    progress=lambda label: print(f"{name}: curve {label}", file=sys.stderr))
            _write_text(a.report, render({**card, "name": card.get("name") or name}, res, a.eps / 255, curves,
                                         curve_eps, len(yc)))
            print(f"wrote {a.report}", file=sys.stderr)
        if a.write_card:
            update_card(path, accuracy=res.accuracy,
                        evaluation={"n": res.n, "counts": res.counts, "eps": a.eps, "seconds": res.seconds,
                                    "flags": res.flags})
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
