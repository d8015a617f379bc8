"""Channel statistics: the paper's dataset-level figures, live, on the models you choose."""
from __future__ import annotations



import pandas as pd
import streamlit as st
import torch

import cas
from app.common import cache, images, models, presentation, url_state
from cas import stats as cas_stats
from cas.precision import all_cores, threads

P = "stats_"
HELP = {"mean_magnitude_nat": "Average |activation| of a channel, clean images",
        "mean_magnitude_adv": "Average |activation| of a channel, attacked images",
        "active_share_nat": "Share of the channels above the threshold on a clean image",
        "active_share_adv": "Share of the channels above the threshold on an attacked image",
        "uniformity_nat": "How evenly the clean images activate the channels (1 = all equally often)",
        "uniformity_adv": "How evenly the attacked images activate the channels (1 = all equally often)"}
ON_GPU = torch.cuda.is_available()
# gradient attacks with one Linf budget, PGD first (the paper's)
ATTACKS = sorted((n for n, s in cas.ATTACKS.items() if s.gradient and s.norm == "linf"), key=lambda n: n != "pgd")


def page() -> None:
    """The Channel statistics page: the paper's dataset-level figures on chosen models."""
    st.title(":material/bar_chart: Channel statistics")
    st.caption("The paper's evidence, on many images at once. Each model sees the same test images, clean and "
               "attacked; for the last blocks of the network we record how strongly each channel (feature "
               "detector) responds. The paper's claims: adversarial images make channels fire **harder** and "
               "**more of them** fire (activation spreads out); adversarial training fixes the first, not the "
               "second; CAS suppresses the extra channels.")

    available = models.list_available()
    if not available:
        st.info(models.NO_MODELS_MESSAGE)
        st.stop()
    images.cifar_test_or_stop()

    names = [m["name"] for m in available]
    default = [n for n in ("std", "at", "at-cas") if n in names] or names[:3]

    def _parse_models(text: str) -> list[str]:
        chosen = [t for t in text.split(",") if t]
        unknown = [t for t in chosen if t not in names]
        if unknown:
            raise ValueError(f"names models that are not installed here ({', '.join(unknown)})")
        return chosen

    PARAMS = [url_state.Param(P + "models", "models", default, _parse_models, ",".join),
              url_state.Param(P + "cls", "cls", "airplane", url_state.one_of(("all",) + tuple(cas.CLASSES))),
              url_state.Param(P + "n", "n", 512 if ON_GPU else 64, url_state.int_in(8, images.MAX_REQUEST_IMAGES)),
              url_state.Param(P + "attack", "attack", ATTACKS[0], url_state.one_of(tuple(ATTACKS))),
              url_state.Param(P + "eps", "eps", 8.0, url_state.float_in(0.5, 64.0), url_state.dump_number),
              url_state.Param(P + "steps", "steps", 10, url_state.int_in(1, 50)),
              url_state.Param(P + "thr", "thr", 1.0, url_state.float_in(0.0, 20.0), url_state.dump_number)]
    for message in url_state.load_from_url("channel_stats", PARAMS):
        st.warning(f"A setting in the link was ignored: {message}.")
    with st.form(P + "form"):
        chosen = st.multiselect("Models", names, key=P + "models",
                                help="Pick a standard model, an adversarially trained one and a CAS one to see "
                                     "all three of the paper's claims.")
        c1, c2, c3, c4 = st.columns(4)
        cls = c1.selectbox("Images of class", ["all"] + list(cas.CLASSES), key=P + "cls",
                           help="The paper used the 1,000 test images of one class (airplane).")
        n = c2.number_input("Number of images", 8, images.MAX_REQUEST_IMAGES, step=8, key=P + "n",
                            help="A few hundred take about a minute per model on a laptop CPU.")
        attack = c3.selectbox("Attack", ATTACKS, key=P + "attack", format_func=lambda a: cas.ATTACKS[a].label,
                              help="CAS-adaptive attacks apply to CAS models; other models get plain PGD.")
        eps = c4.number_input("ε (/255)", 0.5, 64.0, step=0.5, key=P + "eps")
        steps = st.slider("Attack steps", 1, 50, key=P + "steps")
        go = st.form_submit_button("Compute statistics", type="primary")

    threshold = st.slider("A channel counts as *activated* above this share of the image's strongest channel (%)",
                          0.0, 20.0, step=0.5, key=P + "thr",
                          help="The paper uses 1%. Changing it re-counts; it does not re-run the attacks.") / 100
    url_state.write_to_url(PARAMS, extra_names=("present",))


    def compute(name: str) -> cas_stats.ModelStats:
        entry = available[names.index(name)]
        loaded = models.load_from_path(entry["path"], name=name)
        atk = cas.ATTACKS[attack].for_model(loaded.model).name
        key = ("stats", loaded.key, cls, int(n), atk, float(eps), int(steps))
        xs, ys = images.shuffled_subset(int(n), cls)
        settings = cas.AttackSettings(eps=eps / 255, steps=steps)  # automatic step: cas.attacks.auto_step_size

        def run():
            bar = st.progress(0.0, text=f"{name}: attacking {len(ys)} images…")
            try:
                with threads(all_cores()):
                    return cas_stats.channel_statistics(
                        loaded.model, xs, ys, atk, settings, batch_size=64, name=name,
                        progress=lambda d, t: bar.progress(d / t, text=f"{name}: {d} of {t} images"))
            finally:
                bar.empty()
        return cache.cached(key, run, store="stats")


    if go:
        st.session_state[P + "ran"] = (tuple(chosen), cls, int(n), attack, float(eps), int(steps))
    ran = st.session_state.get(P + "ran")
    if not ran or not chosen:
        st.info("Choose models and press **Compute statistics**.")
        st.stop()
    chosen, cls, n, attack, eps, steps = ran
    try:
        results = {name: compute(name) for name in chosen if name in names}
    except (ValueError, cas.CheckpointError) as e:
        st.error(str(e))
        st.stop()

    rows = [r for s in results.values() for r in cas_stats.summary_rows(s, threshold)]
    table = pd.DataFrame(rows)
    st.subheader("Summary")
    st.caption("Per model and CAS point (for a model without CAS: the same block). *Magnitude*: average "
               "channel activation; *channels on*: the share of channels activated per image; *uniformity*: "
               "how evenly activation is spread over channels across images (1 = every channel equally "
               "often). *Clean* = natural test images, *attacked* = their adversarial versions. Each figure "
               f"comes with its standard error (± SE), from {cas_stats.BOOTSTRAP} bootstrap resamples of the "
               "images: differences within about two standard errors are noise.")
    config = {}
    for key, label in cas_stats.COLUMN_LABELS.items():
        if key in ("model", "point", "stage", "attack"):  # who and where: kept in view while scrolling
            config[key] = st.column_config.TextColumn(label, width=100, pinned=key != "attack")
        else:  # wide enough for the whole label
            width = 70 if label == "± SE" else 8 * len(label) + 30
            config[key] = st.column_config.NumberColumn(label, width=width, help=HELP.get(key.removesuffix("_se")),
                                                        format="%.1f" if "acc" in key else "%.4f")
    config["images"] = st.column_config.NumberColumn("Images", format="%d", width=70)
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)
    st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(), "channel_statistics.csv",
                       "text/csv", on_click="ignore")

    roles = {}
    for name, s in results.items():
        roles.setdefault(cas_stats.role_of(available[names.index(name)]["card"]), s)
    effects = cas_stats.paper_effects(roles, threshold)
    if effects:
        st.subheader("Do the paper's claims hold here?")
        icons = {"holds": ":material/check_circle:", "does not hold": ":material/cancel:",
                 "within noise": ":material/help:"}
        for e in effects:
            st.markdown(f"{icons[e['verdict']]} **{e['claim']}** — **{e['verdict']}**: {e['evidence']}.")
        st.caption("Each claim is a difference that should be above zero. The 95% interval comes from resampling "
                   f"the images {cas_stats.BOOTSTRAP} times (the same draws for every model, which saw the same "
                   "images): *holds* when the whole interval is above zero, *does not hold* when it is below, "
                   "*within noise* when it contains zero — more images narrow it.")

    for name, s in results.items():
        st.subheader(f"{name}: clean accuracy {s.clean_accuracy:.1f}%, under {cas.ATTACKS[s.attack].label} "
                     f"{s.adversarial_accuracy:.1f}% ({s.n} images)")
        tabs = st.tabs([p.name for p in s.points])
        for tab, p in zip(tabs, s.points):
            with tab:
                stages = ["before", "after"] if p.has_mask else ["before"]
                for stage in stages:
                    c1, c2 = st.columns(2)
                    label = f"{stage} the CAS mask" if p.has_mask else "block output"
                    c1.plotly_chart(presentation.big_fonts(cas_stats.magnitude_figure(p, stage, threshold, f"Magnitude, {label}")),
                                    width="stretch", key=f"{P}{name}{p.name}{stage}m")
                    c2.plotly_chart(presentation.big_fonts(cas_stats.frequency_figure(p, stage, threshold, f"Frequency, {label}")),
                                    width="stretch", key=f"{P}{name}{p.name}{stage}f")
    st.caption("Left: each channel's average activation, natural and adversarial curves each sorted from strongest "
               "to weakest (the paper's Figure 1) — red above blue means the attack makes channels fire harder. "
               "Right: on how many images each channel fires, channels in the natural order (the paper's "
               "uniformity figure) — a flatter red curve means the attack switches on channels that natural "
               "images of this class rarely use.")


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
