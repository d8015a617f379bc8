"""Dataset-level channel statistics (the paper's Figures 1-2), as numbers, figures and a check.

    python -m cas.stats std at at-cas --n 500 --class airplane --attack pgd --out analysis/
    python -m cas.stats std at at-cas --check

For each model: N test images (one class or all), their adversarial versions (an attack of
:data:`cas.ATTACKS`, eps 8/255 by default), and per CAS point (or the matching block of a model without
CAS) the per-channel activations before and after the mask. From them: the paper's magnitude and
frequency curves and summary figures (:mod:`cas.analysis`). ``--out`` writes Plotly HTML figures, a CSV
table and a JSON file; ``--check`` reports whether the paper's effects hold on the chosen models.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import analysis
from .attacks import ATTACKS, AttackSettings, run_attack
from .cli import HelpFormatter

from .data import CLASSES
NATURAL, ADVERSARIAL = "#1f77b4", "#d62728"


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
    settings = settings or AttackSettings(eps=8 / 255, steps=20, step_size=2 / 255)
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


def summary_rows(stats: ModelStats, threshold: float = 0.01) -> list[dict]:
    """One row per (CAS point, before/after the mask): the summary figures, natural vs adversarial."""
    rows = []
    for p in stats.points:
        stages = [("before mask", p.natural_before, p.adversarial_before)]
        if p.has_mask:
            stages.append(("after mask", p.natural_after, p.adversarial_after))
        for stage, nat, adv in stages:
            sn, sa = analysis.summary(nat, threshold), analysis.summary(adv, threshold)
            rows.append({
                "model": stats.model, "point": p.name, "stage": stage, "images": stats.n,
                "attack": stats.attack, "clean_acc": round(stats.clean_accuracy, 2),
                "adv_acc": round(stats.adversarial_accuracy, 2),
                "mean_magnitude_nat": sn["mean_magnitude"], "mean_magnitude_adv": sa["mean_magnitude"],
                "active_share_nat": sn["active_share"], "active_share_adv": sa["active_share"],
                "uniformity_nat": sn["uniformity"], "uniformity_adv": sa["uniformity"],
            })
    return rows


def magnitude_figure(p: PointStats, stage: str = "before", threshold: float = 0.01, title: str = ""):
    """The paper's magnitude figure: per-channel magnitude, natural and adversarial curves each sorted
    in descending order, overlaid as bars."""
    c = analysis.compare(*_stage(p, stage), threshold)
    return _overlay(c["magnitude_natural"], c["magnitude_adversarial"],
                    title or f"Magnitude at {p.name} ({stage} mask)", "channel (sorted by magnitude)",
                    "average activation")


def frequency_figure(p: PointStats, stage: str = "before", threshold: float = 0.01, title: str = ""):
    """The paper's uniformity figure: how many images activate each channel (above ``threshold`` x the
    image's strongest channel); channels in the natural count's order, adversarial in the same order."""
    c = analysis.compare(*_stage(p, stage), threshold)
    return _overlay(c["frequency_natural"], c["frequency_adversarial"],
                    title or f"Activation frequency at {p.name} ({stage} mask)",
                    "channel (sorted by natural frequency)", "images activating it")


def _overlay(natural: torch.Tensor, adversarial: torch.Tensor, title: str, xtitle: str, ytitle: str):
    """Natural and adversarial curves as overlaid bars; title on top, legend under the axis."""
    import plotly.graph_objects as go

    k = list(range(natural.shape[0]))
    fig = go.Figure([go.Bar(x=k, y=natural.numpy(), name="natural", marker_color=NATURAL, opacity=0.75),
                     go.Bar(x=k, y=adversarial.numpy(), name="adversarial", marker_color=ADVERSARIAL,
                            opacity=0.6)])
    fig.update_layout(barmode="overlay", bargap=0, height=340, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text=title, x=0, xanchor="left"), xaxis_title=xtitle, yaxis_title=ytitle,
                      legend=dict(orientation="h", y=-0.25, yanchor="top", x=0.5, xanchor="center"))
    return fig


def _stage(p: PointStats, stage: str):
    if stage == "after":
        return p.natural_after, p.adversarial_after
    return p.natural_before, p.adversarial_before


def paper_effects(stats: dict[str, ModelStats], threshold: float = 0.01) -> list[dict]:
    """Whether the paper's claims hold on these models, each with the numbers behind it. Looks at the
    last CAS point (or the matching block), before the mask, as the paper's figures do. Models are
    recognised by role: ``std`` (no adversarial training, no CAS), ``at`` (adversarial, no CAS) and
    ``cas`` (with CAS); ``stats`` maps each role present to its statistics."""
    def last(role):
        s = stats[role]
        p = s.points[-1]
        return analysis.summary(p.natural_before, threshold), analysis.summary(p.adversarial_before, threshold)

    out = []

    def claim(text, holds, evidence):
        out.append({"claim": text, "holds": bool(holds), "evidence": evidence})

    if "std" in stats:
        n, a = last("std")
        claim("Adversarial images raise channel magnitudes (standard model)",
              a["mean_magnitude"] > n["mean_magnitude"],
              f"mean magnitude {n['mean_magnitude']:.4f} natural vs {a['mean_magnitude']:.4f} adversarial")
        claim("Adversarial images activate channels more uniformly (standard model)",
              a["uniformity"] > n["uniformity"],
              f"uniformity {n['uniformity']:.4f} natural vs {a['uniformity']:.4f} adversarial")
    if "std" in stats and "at" in stats:
        (ns, as_), (na, aa) = last("std"), last("at")
        gap_std = as_["mean_magnitude"] / max(ns["mean_magnitude"], 1e-12)
        gap_at = aa["mean_magnitude"] / max(na["mean_magnitude"], 1e-12)
        claim("Adversarial training shrinks the magnitude gap", gap_at < gap_std,
              f"adversarial/natural magnitude ratio {gap_std:.3f} (standard) vs {gap_at:.3f} (AT)")
        claim("Adversarial training does not remove the uniformity gap",
              aa["uniformity"] > na["uniformity"],
              f"AT uniformity {na['uniformity']:.4f} natural vs {aa['uniformity']:.4f} adversarial")
    if "at" in stats and "cas" in stats:
        aa, ac = last("at")[1], last("cas")[1]
        claim("CAS makes adversarial activation less uniform than AT does",
              ac["uniformity"] < aa["uniformity"],
              f"adversarial uniformity {aa['uniformity']:.4f} (AT) vs {ac['uniformity']:.4f} (AT+CAS)")
    return out


def model_label(name_or_path: str) -> str:
    """A short name: a bundled name as it is, a run's ``<run>/best.safetensors`` as ``<run>``."""
    p = Path(name_or_path)
    if p.suffix != ".safetensors":
        return str(name_or_path)
    return p.parent.name if p.stem == "best" else p.stem


def role_of(card: dict) -> str:
    if card.get("cas"):
        return "cas"
    return "std" if card.get("method", "std") == "std" else "at"


def main(argv=None):
    from . import data as cdata
    from .checkpoint import CheckpointError, load_checkpoint, resolve

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
        from .checkpoint import available_models

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
            model, card = load_checkpoint(resolve(name))
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
        import csv

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
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    for e in effects:
        print(f"{'HOLDS' if e['holds'] else 'DOES NOT HOLD'}: {e['claim']} ({e['evidence']})")


if __name__ == "__main__":
    main()
