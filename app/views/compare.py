"""Compare: the same image and attack on 2-4 models side by side, each attacked on its own (white-box) or
all hit by the adversarial image crafted on one of them (transfer)."""
from __future__ import annotations

from types import SimpleNamespace


import pandas as pd
import streamlit as st

import cas
from app.common import cache, figures, images, lab, models, panels, pickers, presentation, url_state

P = "cmp_"
MAX_MODELS = 4
TOP_K = 32  # channels drawn per model when three or more columns share the width
MODES = {"whitebox": "Attack each model itself (white-box)",
         "transfer": "Craft the attack on one model, test it on all (transfer)"}


def page() -> None:
    """The Compare page: one image and attack on 2-4 models side by side."""
    st.title(":material/compare: Compare models")
    st.caption("The same image and the same attack on several models, side by side. Does CAS change what the "
               "attack does to the channels? Does an adversarial image made for one model also fool the others?")

    available = models.list_available()
    names = [m["name"] for m in available]
    if len(names) < 2:
        st.info(models.NO_MODELS_MESSAGE if not names else
                f"Only one model is available here (**{names[0]}**); Compare needs at least two. "
                "Train another one on the **Train** page, or use the **Attack Lab** for a single model.")
        st.stop()


    def _parse_models(text: str) -> list[str]:
        chosen = [t for t in text.split(",") if t]
        unknown = [t for t in chosen if t not in names]
        if unknown:
            raise ValueError(f"names models that are not installed here ({', '.join(unknown)})")
        if not 1 <= len(chosen) <= MAX_MODELS:
            raise ValueError(f"must name 1 to {MAX_MODELS} models")
        return chosen


    # Defaults follow the Attack Lab, so "the same image and attack" is one click away.
    lab_values = pickers.values_of("lab_", ["src", "cls", "idx", "attack", "eps", "l2eps", "steps", "step",
                                            "l2step", "rand", "target", "seed", "queries"])
    PARAMS = ([url_state.Param(P + "models", "models", names[:3], _parse_models, ",".join),
               url_state.Param(P + "mode", "mode", "whitebox", url_state.one_of(tuple(MODES))),
               url_state.Param(P + "source", "source", names[0], url_state.one_of(tuple(names)))]
              + pickers.image_params(P, lab_values) + pickers.attack_params(P, lab_values)
              + pickers.chart_params(P))
    for message in url_state.load_from_url("compare", PARAMS):
        st.warning(f"A setting in the link was ignored: {message}.")

    with st.sidebar:
        st.header("Models")
        chosen = st.multiselect(f"Models to compare (2 to {MAX_MODELS})", names, key=P + "models",
                                max_selections=MAX_MODELS)
        mode = st.radio("How to attack", list(MODES), key=P + "mode", format_func=MODES.get)
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
        any_cas = any(m.model.has_cas for m in loaded.values())
        attacker_cas = loaded[source].model.has_cas if mode == "transfer" and source in loaded else any_cas
        st.header("Attack")
        choice = pickers.attack_controls(P, SimpleNamespace(has_cas=attacker_cas), st.sidebar)

    st.subheader("Image")
    image = pickers.image_picker(P)
    url_state.write_to_url(PARAMS)

    if len(loaded) < 2:
        st.info(f"Choose at least two models in the sidebar (up to {MAX_MODELS}).")
        st.stop()
    if image is None or choice is None:
        st.stop()


    def own_choice(model) -> tuple[lab.AttackChoice, str]:
        """The attack for one model: a CAS-adaptive attack becomes its fallback on a model without CAS
        (what it reduces to there)."""
        if choice.attack == lab.NONE:
            return choice, ""
        spec = cas.ATTACKS[choice.attack].for_model(model)
        if spec.name != choice.attack:
            return lab.AttackChoice(spec.name, **dict(choice.values)), f"no CAS module here, so this is plain {spec.label}"
        return choice, ""


    results, notes = {}, {}
    try:
        if mode == "whitebox":
            for name, m in loaded.items():
                c, notes[name] = own_choice(m.model)
                results[name] = cache.attack_image(m.key, m.model, image, c)
        else:
            src = loaded[source]
            crafted = cache.attack_image(src.key, src.model, image, choice)
            for name, m in loaded.items():
                if name == source:
                    results[name], notes[name] = crafted, "the attack was crafted on this model"
                else:
                    results[name] = cache.attack_image(m.key, m.model, image, choice, x_adv=crafted.x_adv,
                                                         extra_key=("transfer", src.key))
                    notes[name] = f"adversarial image crafted on {source}"
    except ValueError as e:
        st.error(f"The attack could not run: {e}")
        st.stop()

    how = "each model attacked on its own" if mode == "whitebox" else f"crafted on {source}, applied to all"
    st.subheader(f"Result: {choice.describe()} on {image.title} — {how}")
    if mode == "transfer":
        st.image(images.upscale(crafted.x_adv, 128), caption=f"The adversarial image crafted on {source}")


    @st.fragment
    def side_by_side() -> None:
        """One column per model. Each kind of content is its own row of columns, so that rows line up
        across models whatever the length of the text above them."""
        sort, threshold = pickers.chart_options(P)
        url_state.write_to_url(PARAMS)
        items = list(results.items())

        def row():
            return zip(st.columns(len(items)), items)

        for col, (name, res) in row():
            with col:
                st.markdown(f"#### {name}")
                st.caption(models.card_line(loaded[name].card) + (f" — *{notes[name]}*" if notes[name] else ""))
        for col, (name, res) in row():
            with col:
                panels.verdict(res)
        st.markdown("**Final prediction**")
        for col, (name, res) in row():
            panels.probability_chart(res, col, key=f"cmp_probs_{name}", height=320, aux_heads=False)
        view_names = sorted({res.modules[-1].name for _, res in items})
        # narrow columns: the strongest channels only, so that each bar stays visible
        top_k = TOP_K if len(items) >= 3 or presentation.is_on() else None
        shown = f"the {TOP_K} first channels in the chosen order" if top_k else "every channel"
        st.markdown(f"**Channels of the last block ({', '.join(view_names)}): {shown}**")
        for col, (name, res) in row():
            view = res.modules[-1]
            fig = figures.channel_figure(view, lab.channel_order(view, sort), res.attacked, height=560,
                                         threshold=threshold, top_k=top_k)
            fig.update_layout(showlegend=False, margin=dict(t=40))  # colours: see the caption below
            col.plotly_chart(fig, key=f"cmp_ch_{name}", config={"displayModeBar": False})
        for col, (name, res) in row():
            view = res.modules[-1]
            nat, adv = (lab.module_summary(v, threshold / 100) for v in view.before)
            k = view.before.shape[1]
            col.markdown(f"Channels switched on: **{nat['active']}** (clean) → **{adv['active']}** "
                         f"(adversarial) of {k}  \nTotal activation: **{nat['total']:.2f}** → "
                         f"**{adv['total']:.2f}**")
        st.caption("Each column is one model, given the same image. The channel charts show the last block of "
                   "the network (where CAS sits), sorted as chosen above: blue the clean image, red the "
                   "adversarial one; for CAS models the top panel is before the mask, the middle one the mask "
                   "and the bottom one what passes on after it. Dotted lines: the level above which a channel "
                   "counts as switched on. In the mask panel, orange bars are positive weights, purple negative "
                   "ones, red diamonds the adversarial image's mask. Compare how many channels the attack "
                   "switches on in each model. " + figures.MASK_SENTENCE)
        table = [lab.channel_table(res, name) for name, res in items]
        csv = pd.concat(table, ignore_index=True).to_csv(index=False)
        st.download_button("Channel values of all models (CSV)", csv, f"compare_{image.slug}_{choice.attack}.csv",
                           "text/csv", key="btn_cmp_csv", on_click="ignore")


    side_by_side()


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
