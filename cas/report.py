"""One self-contained HTML page on a model's robustness (``python -m cas.evaluate MODEL --report FILE``):
its card, the accuracy table with the number of images and the standard error of each figure, every
sanity flag in plain words, accuracy-vs-ε curves, and the one number to trust, with the reason.
The page needs no network: the chart library is embedded."""
from __future__ import annotations

import html
import json

from .attacks import ATTACKS
from .evaluate import COLUMNS, EvalResult

CURVE_ATTACKS = ("pgd", "soft_mask_pgd", "adaptive_autoattack")  # plain, adaptive PGD, adaptive AutoAttack
CARD_FIELDS = ("name", "description", "arch", "arch_kwargs", "method", "epsilon", "epochs", "num_parameters",
               "train_seconds", "date", "git_commit", "command", "source", "warnings")
_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#eef6ee;border-left:4px solid #3a3;padding:.7em 1em}
.flag{background:#fff4e5;border-left:4px solid #e80;padding:.5em 1em;margin:.5em 0}
code,pre{background:#f6f6f6;padding:0 .2em}pre{padding:.5em;overflow-x:auto}"""


def _column(key: str) -> str:
    return COLUMNS.get(key, key.replace("_", " "))


def trust_sentence(res: EvalResult, has_cas: bool) -> str:
    """Which number to trust, and why, in one sentence."""
    acc, n = res.accuracy, res.counts
    worst = acc.get("worst_case")
    if worst is None:
        return "No attack ran, so there is no robust accuracy to trust yet."
    why = ("an image counts only if it survived every attack run on it, and the strongest of them"
           + (", adaptive AutoAttack, sends its gradients through the soft CAS mask that plain attacks cannot "
              "see through" if has_cas and "adaptive_autoattack" in acc else
              ", AutoAttack, needs no step size to be tuned" if "autoattack" in acc else
              " is a fixed-step attack, so a stronger one (AutoAttack) may still lower it"))
    text = (f"Trust the per-image worst case, {worst:.1f}% ± {res.stderr.get('worst_case', 0):.1f} "
            f"({n.get('worst_case', res.n)} images): {why}.")
    if has_cas and "pgd20" in acc and acc["pgd20"] - worst > 5:
        text += (f" Plain PGD-20's {acc['pgd20']:.1f}% overstates it by {acc['pgd20'] - worst:.1f} points "
                 "(gradient masking).")
    return text


def _table(res: EvalResult) -> str:
    def seconds(k):
        return f"{res.seconds[k]:.1f}" if k in res.seconds else ""

    rows = "".join(
        f"<tr><td>{html.escape(_column(k))}</td><td class=num>{v:.2f}</td>"
        f"<td class=num>{res.stderr.get(k, 0):.2f}</td><td class=num>{res.counts.get(k, res.n)}</td>"
        f"<td class=num>{seconds(k)}</td></tr>" for k, v in res.accuracy.items())
    return ("<table><tr><th>attack</th><th>accuracy (%)</th><th>standard error (points)</th><th>images</th>"
            f"<th>seconds</th></tr>{rows}</table>")


def measure_curves(model, x_u8, y, eps_values, amp: bool = True, progress=None) -> dict[str, list[float]]:
    """Accuracy (percent) at each budget of ``eps_values`` under plain PGD-20, soft-mask PGD-20 and
    adaptive AutoAttack (for a model without CAS: PGD-20 and AutoAttack's APGD-CE + APGD-T), keyed by
    the attack's label. ``progress(label)`` is told which curve starts."""
    import torch

    from .attacks import AttackSettings, run_attack
    from .evaluate import accuracy_vs_eps

    curves = {}
    for name in CURVE_ATTACKS:
        spec = ATTACKS[name].for_model(model)
        label = spec.label.replace(" (CAS-adaptive)", "") + ("-20" if spec.gradient else "")
        if label in curves:
            continue
        if progress:
            progress(label)
        if spec.gradient:
            curves[label] = accuracy_vs_eps(model, x_u8, y, spec.name, eps_values, steps=20, amp=amp)
            continue
        x = x_u8.float() / 255
        accs = []
        for e in eps_values:
            xa = x if e == 0 else run_attack(name, model, x, y, AttackSettings(eps=e, amp=amp))
            with torch.no_grad():
                accs.append(round(100 * float((model(xa).argmax(1) == y).float().mean()), 2))
        curves[label] = accs
    return curves


def _curves(eps_values: list[float], curves: dict[str, list[float]], n: int) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, acc in curves.items():
        fig.add_scatter(x=[e * 255 for e in eps_values], y=acc, mode="lines+markers", name=label)
    fig.update_layout(xaxis_title="ε (/255)", yaxis_title="accuracy (%)", yaxis_range=[0, 100], height=420,
                      margin=dict(l=50, r=20, t=20, b=50), legend=dict(orientation="h", y=-0.2))
    return fig.to_html(full_html=False, include_plotlyjs=True)


def render(card: dict, res: EvalResult, eps: float, curves: dict[str, list[float]] | None = None,
           eps_values: list[float] | None = None, curve_n: int = 0) -> str:
    """The report as one HTML string. ``eps`` is the table's budget (input units); ``curves`` (from
    :func:`measure_curves`) maps an attack's label to its accuracies at ``eps_values``, measured on the
    first ``curve_n`` images."""
    has_cas = bool(card.get("cas"))
    name = html.escape(str(card.get("name") or "model"))
    card_rows = "".join(f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td><code>"
                        f"{html.escape(v if isinstance(v, str) else json.dumps(v))}</code></td></tr>"
                        for k in CARD_FIELDS if (v := card.get(k)) not in (None, "", [], {}))
    flags = "".join(f"<div class=flag>{html.escape(f)}</div>" for f in res.flags) or \
        "<p>None: every figure is consistent with the others (no attack beat a stronger one, none left more " \
        "images correct than the clean input, and plain and adaptive PGD agree).</p>"
    sections = [
        f"<h1>Robustness report: {name}</h1>",
        f"<p class=verdict><b>The number to trust.</b> {html.escape(trust_sentence(res, has_cas))}</p>",
        f"<h2>Accuracy at ε = {eps * 255:g}/255 (L∞)</h2>",
        f"<p>{res.n} CIFAR-10 test images (the first N of a fixed, seeded shuffle); attacks marked with fewer "
        "images ran on the first ones. Standard error: √(p(1−p)/n). The worst case counts an image as robust "
        "only if it is classified correctly clean and under every attack.</p>",
        _table(res),
        "<h2>Sanity flags</h2>", flags,
    ]
    if curves:
        sections += ["<h2>Accuracy vs ε</h2>", f"<p>The first {curve_n} images.</p>",
                     "<p>Plain PGD attacks the final logits; soft-mask PGD and adaptive AutoAttack send their "
                     "gradients through the soft CAS mask. A curve that stays high while the adaptive ones fall "
                     "is gradient masking, not robustness.</p>" if has_cas else "",
                     _curves(eps_values, curves, curve_n)]
    sections += ["<h2>Model card</h2>", f"<table>{card_rows}</table>",
                 "<p>Written by <code>python -m cas.evaluate</code> (CAS Lab).</p>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Robustness report: {name}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
