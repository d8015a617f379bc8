"""Compare: the same image and attack on 2-4 models side by side, each attacked on its own (white-box) or
all hit by the adversarial image crafted on one of them (transfer)."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import streamlit as st

import cas
from app.common import (compute, figures, image_attack, images, models, panels, pickers, presentation,
                        url_state)
from app.common.defense_text import text_of as defense_words
from app.common.pages import prefix
from cas.family import DEFENSES

P = prefix("compare")
MAX_MODELS = 4
TOP_K = 32  # channels drawn per model when three or more columns share the width
MODES = {"whitebox": "Attack each model itself (white-box)",
         "transfer": "Craft the attack on one model, test it on all (transfer)"}
# the Attack Lab's settings that Compare starts from, so "the same image and attack" is one click away
LAB_SETTINGS = ["src", "cls", "idx", "attack", "eps", "l2eps", "steps", "step", "l2step", "rand", "target", "seed",
                "queries"]


def params(names: list[str]) -> list[url_state.Param]:
    """The page's URL parameters; their defaults follow the Attack Lab's current settings."""
    lab_values = pickers.values_of(prefix("attack_lab"), LAB_SETTINGS)
    return ([url_state.Param(P + "models", "models", names[:3], pickers.model_list(names, MAX_MODELS), ",".join),
             url_state.Param(P + "mode", "mode", "whitebox", url_state.one_of(tuple(MODES))),
             url_state.Param(P + "source", "source", names[0], url_state.one_of(tuple(names)))]
            + pickers.image_params(P, lab_values) + pickers.attack_params(P, lab_values)
            + pickers.chart_params(P))


def sidebar(available: list[dict], names: list[str]):
    """Models, mode, source model and attack: (loaded models by name, mode, source or None, choice or None)."""
    with st.sidebar:
        st.header("Models")
        chosen = st.multiselect(f"Models to compare (2 to {MAX_MODELS})", names, key=P + "models",
                                max_selections=MAX_MODELS)
        mode = st.radio("How to attack", list(MODES), key=P + "mode", format_func=MODES.get)
        source = None
        if mode == "transfer":
            if st.session_state[P + "source"] not in chosen and chosen:
                st.session_state[P + "source"] = chosen[0]
            source = st.selectbox("Craft the attack on", chosen or names, key=P + "source")
        loaded = {}
        for name in chosen:
            entry = available[names.index(name)]
            try:
                loaded[name] = models.load_from_path(entry["path"], name=name)
            except cas.CheckpointError as e:
                st.error(f"{name} cannot be used: {e}")
        attackers = [loaded[source]] if source in loaded else list(loaded.values())
        masked = {m.model.defense for m in attackers if m.model.has_cas}  # the defences the attack meets
        attacker = SimpleNamespace(has_cas=bool(masked), defense=masked.pop() if len(masked) == 1 else None)
        st.header("Attack")
        choice = pickers.attack_controls(P, attacker, st.sidebar)
    return loaded, mode, source, choice


def run_attacks(loaded: dict, image: pickers.ImageChoice, choice: image_attack.AttackChoice,
                source: str | None) -> tuple[dict, dict, image_attack.LabResult | None]:
    """Every model's result and a note about how it was attacked, and the transfer's crafted result
    (None in white-box mode, ``source`` None). The page stops with the library's reason for refused settings."""
    display = panels.progress_bar()
    source_key = loaded[source].key if source else None

    def attack(m, c, crafted=None):  # crafted: the source's result, applied to model m (transfer)
        transfer = crafted is not None
        request = compute.image_request(m.key, image.x, image.label, c, crafted_on=source_key if transfer else None)
        return compute.attack_image(request, m.model, image.x, x_adv=crafted.x_adv if transfer else None,
                                    title=image.title, display=display)

    results, notes, crafted = {}, {}, None
    try:
        if source is None:
            for name, m in loaded.items():
                c, notes[name] = compute.own_choice(choice, m.model)
                results[name] = attack(m, c)
        else:
            crafted = attack(loaded[source], choice)
            for name, m in loaded.items():
                if name == source:
                    results[name], notes[name] = crafted, "the attack was crafted on this model"
                else:
                    results[name] = attack(m, choice, crafted)
                    notes[name] = f"adversarial image crafted on {source}"
    except ValueError as e:
        st.error(f"The attack could not run: {e}")
        st.stop()
    return results, notes, crafted


def heading(choice: image_attack.AttackChoice, image: pickers.ImageChoice, source: str | None,
            crafted: image_attack.LabResult | None) -> None:
    how = "each model attacked on its own" if source is None else f"crafted on {source}, applied to all"
    st.subheader(f"Result: {choice.describe()} on {image.title} — {how}")
    if crafted is not None:
        st.image(images.enlarged_png(crafted.x_adv, 128), caption=f"The adversarial image crafted on {source}",
                 output_format="PNG")


def channel_line(view: image_attack.PointView, threshold: float) -> str:
    """Channels switched on and total activation, clean → adversarial, under one model's chart."""
    nat, adv = (image_attack.module_summary(v, threshold / 100) for v in view.before)
    return (f"Channels switched on: **{nat['active']}** (clean) → **{adv['active']}** (adversarial) of "
            f"{view.before.shape[1]}  \nTotal activation: **{nat['total']:.2f}** → **{adv['total']:.2f}**")


CHANNELS_CAPTION = (
    "Each column is one model, given the same image. The channel charts show the last mask module of the "
    "network (or, without one, its last block), sorted as chosen above: blue the clean image, red the "
    "adversarial one; for models with a mask defence (CAS, or its relatives CIFS, EWAS and FSR) the top panel "
    "is before the mask, the middle one the mask (for EWAS and FSR, whose masks are element-wise, its spatial "
    "mean per channel) and the bottom one what passes on after it. Dotted lines: the level above which a "
    "channel counts as switched on. In the mask panel, orange bars are positive weights, purple negative ones, "
    "red diamonds the adversarial image's mask. Compare how many channels the attack switches on in each model.")


def defense_sentences(results: dict) -> str:
    """What the mask of each defence among ``results`` does, one sentence each (CAS first)."""
    defenses = sorted({res.modules[-1].defense for res in results.values() if res.modules[-1].is_cas},
                      key=list(DEFENSES).index)
    return " ".join(f"**{DEFENSES[d].label}**: {defense_words(d).mask}" for d in defenses)


@st.fragment
def side_by_side(results: dict, notes: dict, cards: dict, page_params: list[url_state.Param], csv_name: str) -> None:
    """One column per model. Each kind of content is its own row of columns, so that rows line up
    across models whatever the length of the text above them."""
    sort, threshold = pickers.chart_options(P)
    url_state.write_to_url(page_params)
    items = list(results.items())

    def row():
        return zip(st.columns(len(items)), items)

    for col, (name, _) in row():
        with col:
            st.markdown(f"#### {name}")
            st.caption(models.card_line(cards[name]) + (f" — *{notes[name]}*" if notes[name] else ""))
    for col, (_, res) in row():
        with col:
            panels.verdict(res)
    st.markdown("**Final prediction**")
    for col, (name, res) in row():
        panels.probability_chart(res, col, key=f"cmp_probs_{name}", height=320, aux_heads=False)
    view_names = sorted({res.modules[-1].name for _, res in items})
    # narrow columns: the strongest channels only, so that each bar stays visible
    top_k = TOP_K if len(items) >= 3 or presentation.is_on() else None
    shown = f"the {TOP_K} first channels in the chosen order" if top_k else "every channel"
    st.markdown(f"**Channels at the last mask module, or the last block without one ({', '.join(view_names)}): "
                f"{shown}**")
    for col, (name, res) in row():
        view = res.modules[-1]
        fig = figures.column_channel_figure(view, image_attack.channel_order(view, sort), res.attacked,
                                            threshold=threshold, top_k=top_k)
        col.plotly_chart(fig, key=f"cmp_ch_{name}", config={"displayModeBar": False})
    for col, (_, res) in row():
        col.markdown(channel_line(res.modules[-1], threshold))
    st.caption(CHANNELS_CAPTION + " " + defense_sentences(results))
    csv = pd.concat([image_attack.channel_table(res, name) for name, res in items], ignore_index=True).to_csv(index=False)
    st.download_button("Channel values of all models (CSV)", csv, csv_name, "text/csv",
                       key=pickers.button_key(P, "csv"), on_click="ignore")


def page() -> None:
    """The Compare page: one image and attack on 2-4 models side by side."""
    st.title(":material/compare: Compare models")
    st.caption("The same image and the same attack on several models, side by side. Does CAS (or one of its "
               "relatives, CIFS, EWAS and FSR) change what the attack does to the channels? Does an adversarial "
               "image made for one model also fool the others?")
    available = models.list_available()
    names = [m["name"] for m in available]
    if len(names) < 2:
        st.info(models.NO_MODELS_MESSAGE if not names else
                f"Only one model is available here (**{names[0]}**); Compare needs at least two. "
                "Train another one on the **Train** page, or use the **Attack Lab** for a single model.")
        st.stop()
    page_params = params(names)
    for message in url_state.load_from_url("compare", page_params):
        st.warning(f"A setting in the link was ignored: {message}.")
    loaded, mode, source, choice = sidebar(available, names)
    st.subheader("Image")
    image = pickers.image_picker(P)
    url_state.write_to_url(page_params)
    if len(loaded) < 2:
        st.info(f"Choose at least two models in the sidebar (up to {MAX_MODELS}).")
        st.stop()
    if image is None or choice is None:
        st.stop()
    results, notes, crafted = run_attacks(loaded, image, choice, source if mode == "transfer" else None)
    heading(choice, image, source if mode == "transfer" else None, crafted)
    side_by_side(results, notes, {name: m.card for name, m in loaded.items()}, page_params,
                 f"compare_{image.slug}_{choice.attack}.csv")


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
