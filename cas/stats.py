"""Dataset-level channel statistics (the paper's Figures 1-2), as numbers, figures and a check.

    python -m cas.stats std at at-cas --n 500 --class airplane --attack pgd --out analysis/
    python -m cas.stats std at at-cas --check

For each model: N test images (one class or all), their adversarial versions (an attack of
:data:`cas.ATTACKS`, eps 8/255 by default), and per CAS point (or the matching block of a model without
CAS) the per-channel activations before and after the mask. From them: the paper's magnitude and
frequency curves and summary figures (:mod:`cas.analysis`). ``--out`` writes Plotly HTML figures, a CSV
table and a JSON file; ``--check`` reports whether the paper's effects hold on the chosen models. Every
summary figure comes with a bootstrap standard error over the images, and every claim with a 95%
bootstrap interval and a verdict: holds, does not hold, or within noise.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import analysis
from . import data as cdata
from .attacks import ATTACKS, AttackSettings, run_attack
from .checkpoint import CheckpointError, available_models, load_model_and_card, resolve
from .cli import HelpFormatter
from .data import CLASSES
from .plots import ADVERSARIAL, NATURAL, overlay_bars  # noqa: F401 (the colours: importable from here as before)

BOOTSTRAP = 200  # resamples of the images for the standard errors and intervals
FIGURES = ("mean_magnitude", "active_share", "uniformity")
# human names of the summary table's columns (the CSV and JSON keep the short keys)
COLUMN_LABELS = {
    "model": "Model", "point": "CAS point", "stage": "Stage", "images": "Images", "attack": "Attack",
    "clean_acc": "Clean acc. (%)", "adv_acc": "Attacked acc. (%)",
    "mean_magnitude_nat": "Magnitude, clean", "mean_magnitude_adv": "Magnitude, attacked",
    "active_share_nat": "Channels on, clean", "active_share_adv": "Channels on, attacked",
    "uniformity_nat": "Uniformity, clean", "uniformity_adv": "Uniformity, attacked",
}
COLUMN_LABELS.update({f"{k}_se": "± SE" for k in list(COLUMN_LABELS) if k.endswith(("_nat", "_adv"))})


@dataclass
class PointStats:
    """Activations (N, K) at one CAS point for natural and adversarial inputs, before/after the mask."""

    name: str
    natural_before: torch.Tensor
    adversarial_before: torch.Tensor
    natural_after: torch.Tensor
    adversarial_after: torch.Tensor
    has_mask: bool


@dataclass
class ModelStats:
    model: str
    attack: str
    n: int
    clean_accuracy: float
    adversarial_accuracy: float
    points: list[PointStats] = field(default_factory=list)


def channel_statistics(model, x_u8: torch.Tensor, y: torch.Tensor, attack: str = "pgd",
                       settings: AttackSettings | None = None, batch_size: int = 100, name: str = "model",
                       progress=None) -> ModelStats:
    """Attack ``x_u8`` (uint8 (N, 3, 32, 32)) in batches and collect per-channel activations.
    ``progress(done, total)`` counts images. The model is only called, never changed."""
    settings = (settings or AttackSettings(eps=8 / 255, steps=20, step_size=2 / 255)).validated()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        raise ValueError(f"batch_size must be a whole number from 1 to 10000, got {batch_size!r}")
    if x_u8.dim() != 4 or x_u8.shape[0] != y.shape[0] or not 1 <= x_u8.shape[0] <= 50_000:
        raise ValueError(f"expected 1 to 50000 images (N, 3, 32, 32) with N labels, got images of shape "
                         f"{tuple(x_u8.shape)} and {tuple(y.shape)} labels")
    n = x_u8.shape[0]
    x = x_u8.float() / 255
    adv_parts = []
    for i in range(0, n, batch_size):
        adv_parts.append(run_attack(attack, model, x[i:i + batch_size], y[i:i + batch_size], settings))
        if progress:
            progress(min(i + batch_size, n), n)
    nat = analysis.channel_activations(model, x, batch_size=batch_size)
    adv = analysis.channel_activations(model, torch.cat(adv_parts), batch_size=batch_size)
    points = [PointStats(dn.name, dn.before, da.before, dn.after, da.after, dn.aux_logits is not None)
              for dn, da in zip(nat.details, adv.details)]

    def accuracy(logits):
        return 100 * float((logits.argmax(1) == y).float().mean()) if n else 0.0

    return ModelStats(name, attack, n, accuracy(nat.logits), accuracy(adv.logits), points)


def resamples(n: int, b: int = BOOTSTRAP, seed: int = 0) -> torch.Tensor:
    """(b, n) image indices drawn with replacement: the bootstrap's resamples, fixed by ``seed`` so the
    same images are drawn for every model and stage (the models saw the same images)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(n, 1), (b, n), generator=gen)


def bootstrap(values: torch.Tensor, threshold: float = 0.01, draws: torch.Tensor | None = None) -> dict:
    """Each figure of :func:`cas.analysis.summary` on every resample of the images: name -> (b,) tensor.
    Per-image figures are computed once; a resample only reweights the images (how often it drew each)."""
    draws = resamples(values.shape[0]) if draws is None else draws
    b, n = draws.shape
    weights = torch.zeros(b, values.shape[0], dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones(b, n, dtype=torch.float64))
    act = analysis.activated(values, threshold).double()
    magnitude = values.abs().double().mean(1)
    counts = weights @ act  # (b, K): images activating each channel, per resample
    p = counts / counts.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
    k = values.shape[1]
    return {"mean_magnitude": weights @ magnitude / n,
            "active_share": weights @ act.mean(1) / n,
            "uniformity": entropy / torch.log(torch.tensor(float(k))) if k > 1 else torch.zeros(b)}


def summary_rows(stats: ModelStats, threshold: float = 0.01) -> list[dict]:
    """One row per (CAS point, before/after the mask): the summary figures, natural vs adversarial, each
    with its bootstrap standard error over the images (``*_se``)."""
    rows = []
    draws = resamples(stats.n)
    for p in stats.points:
        stages = [("before mask", p.natural_before, p.adversarial_before)]
        if p.has_mask:
            stages.append(("after mask", p.natural_after, p.adversarial_after))
        for stage, nat, adv in stages:
            sn, sa = analysis.summary(nat, threshold), analysis.summary(adv, threshold)
            bn, ba = bootstrap(nat, threshold, draws), bootstrap(adv, threshold, draws)
            row = {"model": stats.model, "point": p.name, "stage": stage, "images": stats.n,
                   "attack": stats.attack, "clean_acc": round(stats.clean_accuracy, 2),
                   "adv_acc": round(stats.adversarial_accuracy, 2)}
            for k in FIGURES:
                row.update({f"{k}_nat": sn[k], f"{k}_nat_se": float(bn[k].std()),
                            f"{k}_adv": sa[k], f"{k}_adv_se": float(ba[k].std())})
            rows.append(row)
    return rows


def magnitude_figure(p: PointStats, stage: str = "before", threshold: float = 0.01, title: str = ""):
    """The paper's magnitude figure: per-channel magnitude, natural and adversarial curves each sorted
    in descending order, overlaid as bars."""
    c = analysis.compare(*_stage(p, stage), threshold)
    return overlay_bars(c["magnitude_natural"], c["magnitude_adversarial"],
                    title or f"Magnitude at {p.name} ({stage} mask)", "channel (sorted by magnitude)",
                    "average activation")


def frequency_figure(p: PointStats, stage: str = "before", threshold: float = 0.01, title: str = ""):
    """The paper's uniformity figure: how many images activate each channel (above ``threshold`` x the
    image's strongest channel); channels in the natural count's order, adversarial in the same order."""
    c = analysis.compare(*_stage(p, stage), threshold)
    return overlay_bars(c["frequency_natural"], c["frequency_adversarial"],
                    title or f"Activation frequency at {p.name} ({stage} mask)",
                    "channel (sorted by natural frequency)", "images activating it")


def _stage(p: PointStats, stage: str):
    if stage == "after":
        return p.natural_after, p.adversarial_after
    return p.natural_before, p.adversarial_before


def verdict(low: float, high: float) -> str:
    """The verdict of a claim "difference > 0" from its 95% interval."""
    return "holds" if low > 0 else "does not hold" if high < 0 else "within noise"


def paper_effects(stats: dict[str, ModelStats], threshold: float = 0.01) -> list[dict]:
    """Whether the paper's claims hold on these models, each with the numbers behind it. Looks at the
    last CAS point (or the matching block), before the mask, as the paper's figures do. Models are
    recognised by role: ``std`` (no adversarial training, no CAS), ``at`` (adversarial, no CAS) and
    ``cas`` (with CAS); ``stats`` maps each role present to its statistics.

    Each claim is a difference that should be positive. ``holds`` says whether it is on these images;
    ``interval`` is its 95% bootstrap interval (images resampled, the same draws for every model: they
    saw the same images) and ``verdict`` is "holds" (interval above 0), "does not hold" (below) or
    "within noise" (the interval contains 0)."""
    n = min(s.n for s in stats.values()) if stats else 0
    draws = resamples(n)

    def last(role):
        p = stats[role].points[-1]
        nat, adv = p.natural_before[:n], p.adversarial_before[:n]
        return (analysis.summary(nat, threshold), analysis.summary(adv, threshold),
                bootstrap(nat, threshold, draws), bootstrap(adv, threshold, draws))

    out = []

    def claim(text, difference, spread, evidence):
        low, high = (float(q) for q in torch.quantile(spread, torch.tensor([0.025, 0.975], dtype=spread.dtype)))
        v = verdict(low, high)
        out.append({"claim": text, "holds": bool(difference > 0), "verdict": v,
                    "difference": float(difference), "interval": (low, high), "se": float(spread.std()),
                    "evidence": f"{evidence}; difference {difference:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}]"})

    if "std" in stats:
        n_, a_, bn, ba = last("std")
        claim("Adversarial images raise channel magnitudes (standard model)",
              a_["mean_magnitude"] - n_["mean_magnitude"], ba["mean_magnitude"] - bn["mean_magnitude"],
              f"mean magnitude {n_['mean_magnitude']:.4f} natural vs {a_['mean_magnitude']:.4f} adversarial")
        claim("Adversarial images activate channels more uniformly (standard model)",
              a_["uniformity"] - n_["uniformity"], ba["uniformity"] - bn["uniformity"],
              f"uniformity {n_['uniformity']:.4f} natural vs {a_['uniformity']:.4f} adversarial")
    if "std" in stats and "at" in stats:
        (ns, as_, bns, bas), (na, aa, bna, baa) = last("std"), last("at")
        gap_std = as_["mean_magnitude"] / max(ns["mean_magnitude"], 1e-12)
        gap_at = aa["mean_magnitude"] / max(na["mean_magnitude"], 1e-12)
        spread = (bas["mean_magnitude"] / bns["mean_magnitude"].clamp_min(1e-12)
                  - baa["mean_magnitude"] / bna["mean_magnitude"].clamp_min(1e-12))
        claim("Adversarial training shrinks the magnitude gap", gap_std - gap_at, spread,
              f"adversarial/natural magnitude ratio {gap_std:.3f} (standard) vs {gap_at:.3f} (AT)")
        claim("Adversarial training does not remove the uniformity gap",
              aa["uniformity"] - na["uniformity"], baa["uniformity"] - bna["uniformity"],
              f"AT uniformity {na['uniformity']:.4f} natural vs {aa['uniformity']:.4f} adversarial")
    if "at" in stats and "cas" in stats:
        (_, aa, _, baa), (_, ac, _, bac) = last("at"), last("cas")
        claim("CAS makes adversarial activation less uniform than AT does",
              aa["uniformity"] - ac["uniformity"], baa["uniformity"] - bac["uniformity"],
              f"adversarial uniformity {aa['uniformity']:.4f} (AT) vs {ac['uniformity']:.4f} (AT+CAS)")
    return out


def model_label(name_or_path: str) -> str:
    """A short name: a bundled name as it is, a run's ``<run>/best.safetensors`` as ``<run>``."""
    p = Path(name_or_path)
    if p.suffix != ".safetensors":
        return str(name_or_path)
    return p.parent.name if p.stem == "best" else p.stem


def role_of(card) -> str:
    """"std", "at" or "cas": the model's part in the paper's comparison, from its card (a
    :class:`~cas.cards.ModelCard` or its JSON mapping)."""
    if card.get("cas"):
        return "cas"
    return "std" if card.get("method", "std") == "std" else "at"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cas.stats", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("models", nargs="*",
                    help="bundled model names or checkpoint paths (default: one standard, one AT and one CAS "
                         "model from the bundled set and finished runs)")
    ap.add_argument("--n", type=int, default=500, help="test images (of the class, if one is given)")
    ap.add_argument("--class", dest="cls", default="all", choices=("all",) + CLASSES,
                    help="use only test images of this class (the paper used airplane)")
    ap.add_argument("--attack", default="pgd", choices=[n for n, s in ATTACKS.items() if s.gradient and s.norm == "linf"],
                    help="the attack (a CAS-only one becomes its fallback on models without CAS)")
    ap.add_argument("--eps", type=float, default=8.0, help="Linf budget in /255")
    ap.add_argument("--steps", type=int, default=20, help="attack steps (step size: the automatic rule)")
    ap.add_argument("--threshold", type=float, default=0.01, help="activation threshold (share of the max)")
    ap.add_argument("--out", default=None, help="folder for figures (HTML), table (CSV) and numbers (JSON)")
    ap.add_argument("--check", action="store_true", help="report whether the paper's effects hold")
    ap.add_argument("--data", default=None,
                    help="CIFAR-10 location: a torchvision folder, an image-folder tree or a .tar.xz of one (default: $CAS_DATA or the usual places)")
    a = ap.parse_args(argv)
    if not a.models:
        picked = {}
        for m in available_models():
            picked.setdefault(role_of(m["card"]), str(m["path"]))
        a.models = [picked[r] for r in ("std", "at", "cas") if r in picked]
        if not a.models:
            raise SystemExit("error: no models given and none installed (see pretrained/README.md)")
    try:
        x, y = cdata.test_subset(None, a.data)
    except cdata.DataNotFoundError as e:
        raise SystemExit(f"error: {e}")
    if a.cls != "all":
        keep = y == CLASSES.index(a.cls)
        x, y = x[keep], y[keep]
    x, y = x[:a.n], y[:a.n]
    settings = AttackSettings(eps=a.eps / 255, steps=a.steps)
    all_stats, by_role, rows = {}, {}, []
    for name in a.models:
        try:
            model, card = load_model_and_card(resolve(name))
        except CheckpointError as e:
            raise SystemExit(f"error: {e}")
        attack = ATTACKS[a.attack].for_model(model).name if a.attack in ATTACKS else a.attack
        try:
            s = channel_statistics(model, x, y, attack, settings, name=model_label(name))
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        all_stats[name] = s
        by_role.setdefault(role_of(card), s)
        rows += summary_rows(s, a.threshold)
        print(f"{name}: clean {s.clean_accuracy:.1f}%, {attack} {s.adversarial_accuracy:.1f}% on {s.n} images",
              file=sys.stderr)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "channel_summary.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        for name, s in all_stats.items():
            for p in s.points:
                for stage in (["before", "after"] if p.has_mask else ["before"]):
                    stem = f"{model_label(name)}_{p.name}_{stage}"
                    magnitude_figure(p, stage, a.threshold).write_html(out / f"{stem}_magnitude.html",
                                                                       include_plotlyjs="directory")
                    frequency_figure(p, stage, a.threshold).write_html(out / f"{stem}_frequency.html",
                                                                       include_plotlyjs="directory")
    effects = paper_effects(by_role, a.threshold) if a.check else []
    if a.out:
        (Path(a.out) / "channel_summary.json").write_text(json.dumps({"rows": rows, "effects": effects}, indent=2))
    cols = ["model", "point", "stage", "mean_magnitude_nat", "mean_magnitude_adv", "active_share_nat",
            "active_share_adv", "uniformity_nat", "uniformity_adv"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f} ± {r[c + '_se']:.4f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    if rows:
        print(f"(± one bootstrap standard error over the images, {BOOTSTRAP} resamples)")
    for e in effects:
        print(f"{e['verdict'].upper()}: {e['claim']} ({e['evidence']})")


if __name__ == "__main__":
    main()
