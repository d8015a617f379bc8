"""One self-contained HTML page on a model's robustness (``python -m cas.evaluate MODEL --report FILE``):
its card, the accuracy table with the number of images and the standard error of each figure, every
sanity flag in plain words, the attack-failure indicators (with ``--diagnose``), accuracy-vs-ε curves, and the one number to trust, with the reason.
The page needs no network: the chart library is embedded."""
from __future__ import annotations

import html
import json

from .cards import ModelCard
from .plots import accuracy_curves
from .robustness import CURVE_ATTACKS, EvalResult, column, measure_curves  # noqa: F401 (measure_curves: as before)

CARD_FIELDS = ("name", "description", "arch", "arch_kwargs", "method", "epsilon", "epochs", "num_parameters",
               "train_seconds", "date", "git_commit", "command", "source", "warnings")
_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#eef6ee;border-left:4px solid #3a3;padding:.7em 1em}
.flag{background:#fff4e5;border-left:4px solid #e80;padding:.5em 1em;margin:.5em 0}
code,pre{background:#f6f6f6;padding:0 .2em}pre{padding:.5em;overflow-x:auto}"""


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
        f"<tr><td>{html.escape(column(k))}</td><td class=num>{v:.2f}</td>"
        f"<td class=num>{res.stderr.get(k, 0):.2f}</td><td class=num>{res.counts.get(k, res.n)}</td>"
        f"<td class=num>{seconds(k)}</td></tr>" for k, v in res.accuracy.items())
    return ("<table><tr><th>attack</th><th>accuracy (%)</th><th>standard error (points)</th><th>images</th>"
            f"<th>seconds</th></tr>{rows}</table>")


def _indicators(res: EvalResult) -> str:
    """One table per diagnosed attack: indicator, fired, measured value, the sentence (empty cells
    where a check did not run or measured nothing)."""
    if not res.indicators:
        return ""
    from .attacks import ATTACKS

    parts = ["<h2>Attack-failure indicators</h2>",
             ("<p>Checks after Pintor et al. (NeurIPS 2022) that an attack did its job, each run on the first "
             "images of its attack (the count is in the table). A fired indicator means the attack's figure "
             "may overstate the robustness.</p>")]
    for attack, inds in res.indicators.items():
        label = ATTACKS[attack].label if attack in ATTACKS else attack
        rows = "".join(f"<tr><td>{html.escape(i['name'])}</td><td>{_fired(i)}</td><td class=num>{_measured(i)}</td>"
                       f"<td class=num>{i.get('images') or ''}</td><td>{html.escape(i.get('sentence') or '')}</td></tr>"
                       for i in inds)
        parts.append(f"<h3>{html.escape(label)}</h3><table><tr><th>indicator</th><th>fired</th>"
                     f"<th>measured value</th><th>images</th><th>what it means</th></tr>{rows}</table>")
    return "".join(parts)


def _fired(i: dict) -> str:
    return "" if i.get("fired") is None else ("<b>yes</b>" if i["fired"] else "no")


def _measured(i: dict) -> str:
    value = i.get("value")
    return "" if value is None else html.escape(f"{value:g} {i.get('unit', '')}".strip())


def _curves(eps_values: list[float], curves: dict[str, list[float]], n: int) -> str:
    return accuracy_curves(eps_values, curves).to_html(full_html=False, include_plotlyjs=True)


def render(card: ModelCard | dict, res: EvalResult, eps: float, curves: dict[str, list[float]] | None = None,
           eps_values: list[float] | None = None, curve_n: int = 0) -> str:
    """The report as one HTML string. ``card``: the model's card (typed, or its JSON mapping); ``eps``
    is the table's budget (input units); ``curves`` (from :func:`cas.robustness.measure_curves`) maps
    an attack's label to its accuracies at ``eps_values``, measured on the first ``curve_n`` images."""
    card = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    has_cas = bool(card.cas)
    name = html.escape(str(card.name or "model"))
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
        (f"<p>{res.n} CIFAR-10 test images (the first N of a fixed, seeded shuffle); attacks marked with fewer "
         "images ran on the first ones. Standard error: √(p(1−p)/n). The worst case counts an image as robust "
         "only if it is classified correctly clean and under every attack.</p>"),
        _table(res),
        "<h2>Sanity flags</h2>", flags,
        _indicators(res),
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
