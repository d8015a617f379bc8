"""Robustness evaluation: ``python -m cas.evaluate MODEL [--n 10000] [--write-card] [--diagnose] [--out DIR]``.

Accuracy on clean images and under each attack (Linf, eps 8/255 by default), plus the per-image worst
case (an image counts as robust only if it is classified correctly clean and under every attack run).
Sanity flags are printed loudly: robust accuracy above clean accuracy, a weaker attack beating a
stronger one, and a large gap between plain and CAS-adaptive PGD (gradient masking). ``--diagnose``
adds the attack-failure indicators of :mod:`cas.diagnose` for each attack. Under
``torchrun --nproc_per_node N -m cas.evaluate ...`` the batches are shared out among the processes and
the per-image verdicts gathered: the table is the one a single process prints. ``--out DIR`` keeps each
attack's per-image results as it finishes, so a stopped evaluation resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from . import data as cdata
from .attacks import ATTACKS
from .checkpoint import CheckpointError, atomic_write, load_model_and_card, resolve, update_card
from .cli import HelpFormatter
from .report import render
from .robustness import (
    COLUMNS,
    DEFAULT_ATTACKS,
    EVALUATED,
    MASKING_GAP,
    EvalConfig,
    EvalResult,
    accuracy_vs_eps,
    column,
    evaluate,
    measure_curves,
    sanity_flags,
    standard_error,
)

# the evaluator's names, importable from here as before the evaluation moved to cas.robustness
__all__ = ["ATTACKS", "COLUMNS", "DEFAULT_ATTACKS", "EVALUATED", "MASKING_GAP", "EvalConfig", "EvalResult",
           "accuracy_vs_eps", "evaluate", "main", "markdown_table", "sanity_flags", "standard_error"]


def _curve_budgets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --curve-eps takes numbers separated by commas, got {text!r}") from None
    if not 1 <= len(values) <= 8 or not all(0 <= v <= 64 for v in values):
        raise SystemExit("error: --curve-eps takes 1 to 8 budgets, each between 0 and 64 (/255)")
    return [v / 255 for v in sorted(set(values))]


def _write_text(path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def markdown_table(rows: dict[str, EvalResult]) -> str:
    keys = []
    for r in rows.values():
        keys += [k for k in r.accuracy if k not in keys]
    head = "| model | " + " | ".join(column(k) for k in keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = ""
    for name, r in rows.items():
        cells = [f"{r.accuracy[k]:.2f}" + ("" if r.counts.get(k, r.n) == r.n else f" (n={r.counts[k]})")
                 if k in r.accuracy else "" for k in keys]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cas.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("models", nargs="+", help="bundled model names or checkpoint paths")
    ap.add_argument("--n", "--images", dest="n", type=int, default=10000,
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
    ap.add_argument("--diagnose", nargs="?", const="cheap", default=None, metavar="CHECKS",
                    help="also check the attack-failure indicators (cas.diagnose) of each attack on its first "
                         "--diagnose-n images and print them: 'cheap' (default: the checks that run no second "
                         "attack), 'all', or comma-separated indicator names")
    ap.add_argument("--diagnose-n", type=int, default=200, help="images the indicators are checked on (first N)")
    ap.add_argument("--diagnose-attacks", default=None,
                    help="comma-separated attacks to check (default: every attack run but AutoAttack, adaptive "
                         "AutoAttack and Square)")
    ap.add_argument("--out", "--resume", dest="out", default=None, metavar="FOLDER",
                    help="keep each attack's per-image results in FOLDER/MODEL as it finishes; an evaluation "
                         "stopped midway resumes from there (the same command again)")
    a = ap.parse_args(argv)
    curve_eps = _curve_budgets(a.curve_eps)
    if a.report and len(a.models) != 1:
        raise SystemExit("error: --report writes one model's report; give exactly one model")
    diagnose = _indicators(a.diagnose)
    diagnose_attacks = None
    if a.diagnose_attacks is not None:
        diagnose_attacks = tuple(s.strip() for s in a.diagnose_attacks.split(",") if s.strip())
        bad = [s for s in diagnose_attacks if s not in EVALUATED]
        if bad:
            raise SystemExit(f"error: unknown attack(s) {', '.join(bad)} in --diagnose-attacks")
    for flag, v, hi in (("--n", a.n, 10000), ("--autoattack-n", a.autoattack_n, 10000),
                        ("--diagnose-n", a.diagnose_n, 10000),
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
    rank, world = _setup_distributed()
    device = _device(a.device, rank, world)
    config = EvalConfig(attacks, eps=a.eps / 255, batch_size=a.batch_size, device=device, amp=a.amp,
                        limits={"autoattack": a.autoattack_n, "adaptive_autoattack": a.autoattack_n,
                                "square": a.square_n}, autoattack_version=a.autoattack_version,
                        diagnose=diagnose, diagnose_n=a.diagnose_n, diagnose_attacks=diagnose_attacks)
    try:
        _evaluate_models(a, config, x, y, device, rank, curve_eps)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _indicators(text: str | None) -> tuple[str, ...]:
    """The indicator names of ``--diagnose`` (none without it)."""
    from .diagnose import ALL, CHEAP
    if text is None:
        return ()
    if text.strip().lower() in ("cheap", ""):
        return CHEAP
    if text.strip().lower() == "all":
        return ALL
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in names if k not in ALL]
    if bad:
        raise SystemExit(f"error: unknown indicator(s) {', '.join(bad)}; choose from cheap, all, {', '.join(ALL)}")
    return names


def _setup_distributed() -> tuple[int, int]:
    """(rank, world size): one process, or the processes ``torchrun`` started (the trainer's set-up:
    gloo on CPUs, NCCL on GPUs)."""
    from .train import _setup_distributed as setup
    return setup()


def _device(name: str | None, rank: int, world: int) -> torch.device:
    """The device this process evaluates on: under torchrun on GPUs, its local GPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world > 1:
        import os
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(name)


def print_indicators(name: str, res: EvalResult, file=None) -> None:
    """Each diagnosed attack's indicators, one line each, with their sentences."""
    for attack, inds in res.indicators.items():
        fired = [i["name"] for i in inds if i["fired"]]
        watched = next((i["seconds"] for i in inds if i["key"] == "silent_success"), None)
        checks = sum(i.get("seconds") or 0 for i in inds if i["key"] != "silent_success")
        images = max((i.get("images") or 0 for i in inds), default=0)
        print(f"\n{name}, {ATTACKS[attack].label}: {len(fired)} of {len(inds)} indicators fired"
              + (f" ({', '.join(fired)})" if fired else "") + f" [{images} images; "
              + (f"watched run {watched:.1f} s, " if watched is not None else "") + f"checks {checks:.1f} s]",
              file=file)
        for i in inds:
            value = "" if i["value"] is None else f"{i['value']:g} {i['unit']}"
            print(f"  [{i['verdict']:>7}] {i['name']:<26} {value:<30} {i['sentence']}", file=file)


def _evaluate_models(a, config: EvalConfig, x, y, device, rank: int, curve_eps) -> None:
    rows = {}
    for name in a.models:
        try:
            path = resolve(name)
            model, card = load_model_and_card(path, device)
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        bar = tqdm(total=0, desc=name, file=sys.stderr, leave=False, disable=rank != 0)

        def progress(key, done, total, bar=bar, name=name):
            bar.set_description(f"{name}: {key}")
            bar.total = total
            bar.n = done
            bar.refresh()

        out = Path(a.out) / Path(str(name)).stem if a.out else None
        res = evaluate(model, x, y, config, progress=progress, out=out)
        bar.close()
        rows[name] = res
        if rank != 0:
            continue
        if res.resumed:
            print(f"{name}: read back from {out}: {', '.join(res.resumed)}", file=sys.stderr)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}%" + (f" ({res.seconds[k]:.1f} s)" if k in res.seconds else "")
                                      for k, v in res.accuracy.items())
              + f"  [{sum(res.seconds.values()):.1f} s]", file=sys.stderr)
        for f in res.flags:
            print(f"\n  !!! SANITY FLAG ({name}): {f}\n", file=sys.stderr)
        if a.report:
            xc, yc = x[:a.curve_n].to(device), y[:a.curve_n].to(device)
            curves = measure_curves(model, xc, yc, curve_eps, amp=a.amp,
                                    progress=lambda label, name=name: print(f"{name}: curve {label}", file=sys.stderr))
            _write_text(a.report, render(card.updated(name=card.name or name), res, a.eps / 255, curves,
                                         curve_eps, len(yc)))
            print(f"wrote {a.report}", file=sys.stderr)
        if a.write_card:
            evaluation = {"n": res.n, "counts": res.counts, "stderr": res.stderr, "eps": a.eps,
                          "seconds": res.seconds, "flags": res.flags}
            if res.indicators:
                evaluation |= {"indicators": res.indicators, "indicators_n": min(config.diagnose_n, res.n)}
            update_card(path, accuracy=res.accuracy, evaluation=evaluation)
    if rank == 0:
        print(markdown_table(rows))
        for name, res in rows.items():
            print_indicators(name, res)


if __name__ == "__main__":
    main()
