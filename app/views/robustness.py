"""Robustness: the models' measured accuracies, fresh evaluations, accuracy vs epsilon, and why a CAS
model (or one with a relative of CAS) needs adaptive attacks."""
from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

import cas
from app.common import compute, figures, images, models, panels
from app.common.attack_text import attack_label
from app.common.pages import prefix
from cas.attacks import own_protocol
from cas.evaluate import COLUMNS

P = prefix("robustness")
ON_GPU = torch.cuda.is_available()
# As tabulated by a later paper (EWAS: Zhang, Ren, He, Zhou and Liu, Future Generation Computer Systems,
# 2023) for ResNet-18 on CIFAR-10, Linf 8/255; not measured here.
PAPER = pd.DataFrame([
    ("AT", 84.47, 61.09, 44.33, 44.70), ("AT+CAS", 85.89, 61.17, 50.55, 52.56),
    ("TRADES", 79.57, 62.26, 52.29, 49.18), ("TRADES+CAS", 83.05, 63.81, 56.63, 60.03),
    ("MART", 78.86, 61.87, 51.61, 46.97), ("MART+CAS", 86.40, 62.61, 54.33, 61.49),
], columns=["model", "clean", "FGSM", "PGD-20", "CW-Linf"])
REFERENCES = {  # the methods behind the literature's rows, and where the numbers come from
    "AT": "Madry et al., ICLR 2018",
    "TRADES": "Zhang et al., ICML 2019",
    "MART": "Wang et al., ICLR 2020",
    "+CAS": "Bai et al., ICLR 2021",
    "table": "Zhang, Ren, He, Zhou and Liu (EWAS), Future Generation Computer Systems 2023",
}
WORST_CASE = ("**Worst case**: an image counts as correct only if the model gets it right under *every* attack "
              "that ran on it; the accuracy that survives all of them.")


def shown(table: pd.DataFrame, first: int = 1) -> pd.DataFrame:
    """The table as the page shows it: accuracies as measured (at most two decimals), and cells of
    attacks that did not run (or were never measured) left empty."""
    table = table.copy()
    for c in table.columns[first:]:
        table[c] = [f"{round(v, 2):g}" if isinstance(v, (int, float)) and not pd.isna(v) else "" for v in table[c]]
    return table


def right_aligned(table: pd.DataFrame, first: int = 1) -> dict:
    """Column settings: the numbers' columns aligned right, each wide enough for its name."""
    return {c: st.column_config.TextColumn(c, alignment="right", width=max(60, 8 * len(c) + 24))
            for c in table.columns[first:]}


def column_name(key: str, steps: int | None = None) -> str:
    """The header of an accuracy column; with ``steps``, the step count that actually ran (PGD-10 for
    10 steps, not PGD-20)."""
    name = COLUMNS.get(key, key)
    if steps is None:
        return name
    spec = next((s for s in cas.ATTACKS.values() if s.card_key == key), None)
    if spec is not None and spec.knob("steps") is None:  # a fixed schedule (the authors' protocol): as named
        return name
    if "-20" in name:
        return name.replace("-20", f"-{steps}")
    if spec is not None and spec.knob("steps") is not None:
        return f"{name} ({steps} steps)"
    return name


# -- data shaping (no Streamlit) ------------------------------------------------------------------------

def card_table(available: list[dict]) -> pd.DataFrame:
    """The measured accuracies of the available models, from their cards: model, defence (CAS, CIFS,
    EWAS, FSR or none), method, then one
    column per attack anyone measured (None where a model was not measured); the AutoAttack column says
    which AutoAttack ran when every card agrees."""
    rows = []
    for m in available:
        card = models.card_of(m["card"])
        acc = card.accuracy or {}
        held = card.heldout or {}
        row = {"model": m["name"], "defence": models.defense_label(card) or "none", "method": card.method or "?"}
        row.update({label: acc.get(k) for k, label in COLUMNS.items()})
        if not acc and held:
            row["clean"] = held.get("heldout_clean")
        rows.append(row)
    table = pd.DataFrame(rows)
    measured = [c for c in table.columns[3:] if table[c].notna().any()]  # columns nobody measured go
    table = table[list(table.columns[:3]) + measured]
    typed = [models.card_of(m["card"]) for m in available]
    versions = {str((c.evaluation or {}).get("autoattack")) for c in typed if "autoattack" in (c.accuracy or {})}
    if len(versions) == 1 and versions.pop().startswith("APGD-CE + APGD-T"):  # what ran, in the name
        table = table.rename(columns={COLUMNS["autoattack"]: f"{COLUMNS['autoattack']} (APGD-CE + APGD-T)"})
    return table


def card_notes(available: list[dict]) -> dict:
    """What the card table's captions say: ``errors`` (the cards' positive standard errors, in points)
    and ``notes`` (one line per distinct evaluation setup of the bundled models)."""
    cards = [(m, models.card_of(m["card"])) for m in available]
    errors = [e for m, c in cards for e in (m.get("stderr") or c.get("stderr")
                                            or (c.evaluation or {}).get("stderr") or {}).values()
              if isinstance(e, (int, float)) and e > 0]
    notes = sorted({f"{ev.get('n')} test images (AutoAttack: {ev.get('counts', {}).get('autoattack')}); "
                    f"AutoAttack column: {ev['autoattack']}"
                    for _, c in cards if isinstance(ev := c.evaluation, dict) and ev.get("autoattack")})
    return {"errors": errors, "notes": notes}


def indicator_table(indicators: list[dict]) -> pd.DataFrame:
    """One attack's attack-failure indicators (:func:`cas.diagnose.as_dicts`) as the page shows them:
    indicator, fired, measured value, the sentence; empty cells where a check did not run."""
    return pd.DataFrame([{
        "indicator": i.get("name", i.get("key", "")),
        "fired": "" if i.get("fired") is None else ("yes" if i["fired"] else "no"),
        "measured value": "" if i.get("value") is None else f"{i['value']:g} {i.get('unit', '')}".strip(),
        "images": i.get("images") or "",
        "what it means": i.get("sentence") or ""} for i in indicators],
        columns=["indicator", "fired", "measured value", "images", "what it means"])


def card_indicators(available: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """model -> attack -> indicators, for the models whose cards record them."""
    out = {}
    for m in available:
        inds = (models.card_of(m["card"]).evaluation or {}).get("indicators")
        if isinstance(inds, dict) and inds:
            out[m["name"]] = {a: v for a, v in inds.items() if isinstance(v, list)}
    return out


def literature_table() -> pd.DataFrame:
    """The literature's accuracies (:data:`PAPER`) with the methods' references."""
    table = PAPER.copy()
    table.insert(1, "method", [REFERENCES[m.replace("+CAS", "")]
                               + (f" + {REFERENCES['+CAS']}" if m.endswith("+CAS") else "")
                               for m in PAPER["model"]])
    return table


def evaluation_table(results: dict, steps: int) -> pd.DataFrame:
    """Fresh evaluations as one table: a row per model, a column per accuracy (named for the steps that ran)."""
    keys = list(dict.fromkeys(k for r in results.values() for k in r.accuracy))
    return pd.DataFrame([{"model": name, **{column_name(k, steps): r.accuracy.get(k) for k in keys}}
                         for name, r in results.items()])


def ladder(results: dict, steps: int) -> tuple[list[str], dict[str, list[float]]]:
    """The accuracies of the models with a mask defence (CAS or a relative) under stronger and stronger
    attacks on the same images: (column names, model -> accuracies); empty when none was evaluated."""
    cas_models = {name: r for name, r in results.items() if "soft_mask_pgd20" in r.accuracy}
    if not cas_models:
        return [], {}
    first = next(iter(cas_models.values())).accuracy
    keys = [k for k in ("clean", "pgd20", "joint_pgd20", "soft_mask_pgd20") if k in first]
    return [column_name(k, steps) for k in keys], {name: [r.accuracy[k] for k in keys] for name, r in cas_models.items()}


# -- the page's sections ---------------------------------------------------------------------------------

def report_buttons(results: dict, cards: dict, eps: float) -> None:
    """One download per evaluated model: the self-contained HTML report of ``python -m cas.evaluate
    --report`` (card, table with standard errors, flags, the number to trust)."""
    from cas.report import render

    cols = st.columns(min(len(results), 4) or 1)
    for i, (name, r) in enumerate(results.items()):
        cols[i % len(cols)].download_button(
            f"Report: {name} (HTML)", render(models.card_of(cards[name]).updated(name=name), r, eps / 255),
            file_name=f"{name}-robustness-report.html", mime="text/html", key=f"dl_report_{name}",
            help="One page to keep or share: the model card, this table with the number of images and the "
                 "standard error of each figure, the sanity flags in plain words and which number to trust.")


def cards_section(available: list[dict]) -> None:
    """The measured accuracies of the available models, from their cards."""
    st.subheader("Measured accuracies of the available models")
    if not available:
        st.info(models.NO_MODELS_MESSAGE)
        return
    table = card_table(available)
    st.dataframe(shown(table, 3), hide_index=True, width="stretch", column_config=right_aligned(table, 3))
    found = card_notes(available)
    errors = found["errors"]
    noise = (f" One standard error is {min(errors):.1f} to {max(errors):.1f} points (about 1.5 on 1,000 "
             "images, 2.1 on 500)." if errors else "")
    st.caption("From each model's card, in percent." + noise + " *defence*: the model's mask modules, CAS "
               "or one of its relatives (CIFS, EWAS, FSR). Empty cells: not measured (the mask-adaptive "
               "attacks exist only for models with a mask defence; otherwise run `python -m cas.evaluate MODEL "
               "--write-card`, or a fresh evaluation below). The attacks ran with their evaluation presets "
               "(PGD-20: 20 steps of 2/255; CW-Linf: 30 steps), ε = 8/255. *authors' PGD-20* and *authors' CW*: "
               "the CAS authors' own evaluation, as the paper measured it (ε = 0.031, 20 steps of 0.003, the "
               "final + 2 × mean auxiliary loss, the last iterate counted). *joint PGD-20*: the same loss with "
               "this evaluator's steps of 2/255, keeping each image's best point. *adaptive PGD-20 (lower)*: the "
               "lower of joint and soft-mask PGD-20. " + WORST_CASE)
    for note in found["notes"]:
        st.caption(f"Bundled models: {note}.")


def family_rows(available: list[dict], baseline: str = "at") -> list[dict]:
    """CAS and its relatives against plain AT, from the cards: each one's own authors' evaluation (the
    lowest of its attacks), its strongest attack (the per-image worst case over every attack that ran) and
    how that compares with ``baseline``'s worst case (more than two standard errors above, below, or
    within). Empty without the baseline's card."""
    cards = {m["name"]: models.card_of(m["card"]) for m in available}
    if baseline not in cards or "worst_case" not in (cards[baseline].accuracy or {}):
        return []

    def figure(card, key):
        ev = card.evaluation or {}
        return card.accuracy[key], (ev.get("stderr") or {}).get(key, 0.0), (ev.get("counts") or {}).get(key)

    base, base_se, _ = figure(cards[baseline], "worst_case")
    rows = []
    for name, card in cards.items():
        defense = card.defense
        if defense is None or "worst_case" not in (card.accuracy or {}):
            continue
        own = [s for s in own_protocol(defense) if s.card_key in card.accuracy]
        theirs = min(own, key=lambda s: card.accuracy[s.card_key]) if own else None
        worst, se, n = figure(card, "worst_case")
        gap, both = worst - base, 2 * (se ** 2 + base_se ** 2) ** 0.5
        verdict = "above" if gap > both else "below" if gap < -both else "within two standard errors of"
        rows.append({"model": name, "defence": models.defense_label(card), "clean": card.accuracy.get("clean"),
                     "their evaluation": None if theirs is None else card.accuracy[theirs.card_key],
                     "their attack": "" if theirs is None else theirs.label,
                     "strongest attack (worst case)": worst, "images": n,
                     f"against {baseline}": f"{verdict} {baseline} ({gap:+.1f})"})
    return rows


def family_section(available: list[dict]) -> None:
    """Which member of the channel-defence family, if any, beats plain AT under its strongest attack."""
    rows = family_rows(available)
    if len(rows) < 2:
        return
    st.subheader("CAS and its relatives against plain AT")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption("Each defence under its own authors' evaluation (the lowest of their attacks) and under its "
               "strongest attack: the per-image worst case over every attack its card records, the "
               "mask-adaptive ones included. The last column compares that with plain AT's worst case: "
               "*above* or *below* means by more than two standard errors of the difference.")


def indicators_section(available: list[dict]) -> None:
    """The attack-failure indicators the bundled models' cards record, one table per attack."""
    found = card_indicators(available)
    if not found:
        return
    with st.expander("Did the attacks do their job? Attack-failure indicators from the cards"):
        st.caption("Checks after Pintor et al. (NeurIPS 2022), run on each card's first images "
                   "(`python -m cas.evaluate MODEL --diagnose`). A fired indicator means that attack's figure may "
                   "overstate the robustness. Empty cells: the check did not run or measured nothing.")
        name = st.selectbox("Model", list(found), key=P + "ind_model")
        for attack, inds in found[name].items():
            st.markdown(f"**{attack_label(attack) if attack in cas.ATTACKS else attack}**")
            st.dataframe(indicator_table(inds), hide_index=True, width="stretch")


def literature_section() -> None:
    with st.expander("Reported in the literature (ResNet-18, not measured here)"):
        st.dataframe(literature_table(), hide_index=True, width="stretch")
        st.caption(f"Numbers as tabulated by {REFERENCES['table']}, ResNet-18, CIFAR-10, L∞ ε = 8/255; whether "
                   "re-run or copied from the CAS paper (Bai et al., ICLR 2021) is not stated. The CAS rows use "
                   "the authors' own joint attack (PGD-20 of 0.003 steps on the final + auxiliary losses), never "
                   "a soft-mask one. Note that for every CAS row CW is higher "
                   "than PGD-20, a warning sign of gradient masking.")


def explainer() -> None:
    st.subheader("Why a CAS model needs adaptive attacks")
    st.markdown(
        "A CAS module picks its channel mask from its own guess of the class — an **argmax**. Gradients "
        "cannot see that choice switch, so a plain attack that follows the gradient of the final loss can walk "
        "the wrong way and report the model as more robust than it is. This is **gradient masking**: the "
        "defence hides the slope the attack needs, without removing the adversarial examples. CAS's relatives "
        "do the same in their own ways: **CIFS** picks its mask from its probe's two top classes (an argmax), "
        "**EWAS** from its auxiliary head's guess (an argmax), and **FSR** through a sigmoid so steep that it is "
        "nearly a step. The attacks below that look inside the mask apply to all four.\n\n"
        "- **Plain PGD** uses only the final loss: it can be fooled, sometimes reporting *more* accuracy than "
        "on clean images — an impossible number.\n"
        "- **The authors' PGD-20** (the paper's own protocol) adds the auxiliary heads' losses, with 20 small "
        "steps of 0.003 and the last point counted; **joint PGD** attacks the same loss with steps of 2/255 and "
        "keeps each image's best point: better, not enough.\n"
        "- **AutoAttack on the final logits** (even its gradient-free Square) still over-reports.\n"
        "- **Soft-mask PGD** replaces the argmax row by a softmax-weighted mix of all rows (CIFS: a soft top-2; "
        "FSR: a softer sigmoid) *for the gradient only*; the real model judges every step. It sees how the mask "
        "would switch, and is the honest test.")


def load(available: list[dict], name: str) -> models.LoadedModel:
    """The available model called ``name``."""
    entry = next(m for m in available if m["name"] == name)
    return models.load_from_path(entry["path"], name=name)


def evaluation_form(names: list[str]) -> None:
    """The fresh evaluation's settings; a press keeps them in session state (``rob_evaluated``)."""
    st.subheader("Run a fresh evaluation")
    with st.form(P + "eval"):
        chosen = st.multiselect("Models", names, default=names[:3], key=P + "models")
        c1, c2, c3 = st.columns(3)
        n = c1.number_input("Test images", 8, images.MAX_REQUEST_IMAGES, 1000 if ON_GPU else 48, step=8,
                            key=P + "n", help="The same shuffled test images for every model. AutoAttack and "
                                              f"adaptive AutoAttack run on the first {images.MAX_SLOW_ATTACK_IMAGES:,} "
                                              "at most.")
        steps = c2.slider("Steps of the PGD attacks", 1, 50, 20 if ON_GPU else 10, key=P + "steps")
        eps = c3.number_input("ε (/255)", 0.5, 64.0, 8.0, step=0.5, key=P + "eps")
        attack_names = [n for n, s in cas.ATTACKS.items() if s.card_key and s.norm == "linf"]
        attacks = st.multiselect("Attacks", attack_names, default=[n for n in attack_names if cas.ATTACKS[n].interactive
                                                                    and cas.ATTACKS[n].gradient],
                                 format_func=attack_label, key=P + "attacks",
                                 help="Mask-adaptive attacks are skipped for models without CAS or a relative "
                                      "(CIFS, EWAS, FSR). AutoAttack is slow "
                                      "on a CPU (minutes for a few dozen images).")
        if st.form_submit_button("Evaluate", type="primary"):
            st.session_state[P + "evaluated"] = (tuple(chosen), int(n), int(steps), float(eps), tuple(attacks))


def evaluation_section(available: list[dict], done: tuple) -> None:
    """The fresh evaluation's table, flags, reports and (for models with a mask defence) the attack ladder."""
    chosen, n, steps, eps, attacks = done
    names = [m["name"] for m in available]
    results, cards = {}, {}
    for name in chosen:
        if name not in names:
            continue
        loaded = load(available, name)
        request = compute.EvalRequest(loaded.key, n, steps, eps, attacks)
        results[name] = compute.evaluation(request, loaded.model, name, display=panels.progress_bar())
        cards[name] = loaded.card
    table = evaluation_table(results, steps)
    st.dataframe(shown(table), hide_index=True, width="stretch", column_config=right_aligned(table))
    worst_se = max((e for r in results.values() for e in r.stderr.values()), default=0.0)
    st.caption(f"{n} test images, ε = {eps:g}/255, in percent (one standard error up to {worst_se:.1f} "
               f"points: differences smaller than about twice that are noise); every step-based attack "
               f"ran {steps} steps (as the column names say). Empty cells: the attack does not apply to "
               "that model (mask-adaptive attacks on a model without a mask defence). " + WORST_CASE)
    for name, r in results.items():
        for flag in r.flags:
            st.warning(f"**{name}**: {flag}")
    report_buttons(results, cards, eps)
    columns, accuracies = ladder(results, steps)
    if accuracies:
        st.markdown("**Attack by attack on the models with a mask defence** — the same images, stronger and "
                    "stronger tests:")
        st.plotly_chart(figures.ladder_figure(columns, accuracies), width="stretch", key=P + "ladder")


def curve_form(names: list[str]) -> None:
    """The ε-curve's settings; a press keeps them in session state (``rob_curve_done``)."""
    st.subheader("Accuracy vs ε")
    with st.form(P + "curve"):
        curve_models = st.multiselect("Models", names, default=names[:3], key=P + "cmodels")
        c1, c2 = st.columns(2)
        cn = c1.number_input("Test images", 8, images.MAX_REQUEST_IMAGES, 500 if ON_GPU else 32, step=8,
                             key=P + "cn")
        csteps = c2.slider("PGD steps", 1, 50, 10, key=P + "csteps")
        eps_list = st.multiselect("ε values (/255)", [0, 1, 2, 4, 6, 8, 12, 16], default=[0, 2, 4, 8, 16],
                                  key=P + "eps_list")
        if st.form_submit_button("Draw the curve"):
            st.session_state[P + "curve_done"] = (tuple(curve_models), int(cn), int(csteps), tuple(sorted(eps_list)))


def curve_section(available: list[dict], curve: tuple) -> None:
    """Accuracy against ε for each chosen model: plain PGD, and soft-mask PGD for models with a mask defence."""
    curve_models, cn, csteps, eps_list = curve
    names = [m["name"] for m in available]
    lines = []
    for name in curve_models:
        if name not in names:
            continue
        loaded = load(available, name)
        for atk in compute.curve_attacks(loaded.model):
            request = compute.CurveRequest(loaded.key, cn, csteps, eps_list, atk)
            accs = compute.eps_curve(request, loaded.model, name, display=panels.progress_bar())
            lines.append((f"{name} — {'soft-mask PGD' if atk == 'soft_mask_pgd' else 'PGD'}", eps_list, accs,
                          atk == "pgd" and loaded.model.has_cas))
    st.plotly_chart(figures.eps_curve_figure(lines), width="stretch", key=P + "curve_fig")
    st.caption("Accuracy falls as the attacker may change each pixel more. For models with a mask defence (CAS, "
               "CIFS, EWAS, FSR) the dashed line is plain PGD and the solid one soft-mask PGD: where they part, "
               "plain PGD is being fooled.")


def page() -> None:
    """The Robustness page: measured and reported accuracies, fresh evaluations, the ε-curve."""
    st.title(":material/shield: Robustness")
    st.caption("How often does each model stay right under attack (ε = 8/255 unless said otherwise)? "
               "Accuracies in percent; higher is more robust.")
    available = models.list_available()
    names = [m["name"] for m in available]
    cards_section(available)
    family_section(available)
    indicators_section(available)
    literature_section()
    explainer()
    if not available:
        st.stop()
    images.cifar_test_or_stop()
    evaluation_form(names)
    if done := st.session_state.get(P + "evaluated"):
        evaluation_section(available, done)
    curve_form(names)
    curve = st.session_state.get(P + "curve_done")
    if curve and curve[3]:
        curve_section(available, curve)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
