"""Channel statistics: the paper's dataset-level figures, live, on the models you choose."""
from __future__ import annotations

import streamlit as st
import torch

import cas
from app.common import compute, figures, images, models, panels, pickers, url_state
from app.common.attack_text import attack_label
from app.common.pages import prefix
from cas import stats as cas_stats

P = prefix("channel_stats")
HELP = {"mean_magnitude_nat": "Average |activation| of a channel, clean images",
        "mean_magnitude_adv": "Average |activation| of a channel, attacked images",
        "active_share_nat": "Share of the channels above the threshold on a clean image",
        "active_share_adv": "Share of the channels above the threshold on an attacked image",
        "uniformity_nat": "How evenly the clean images activate the channels (1 = all equally often)",
        "uniformity_adv": "How evenly the attacked images activate the channels (1 = all equally often)"}
ON_GPU = torch.cuda.is_available()
# gradient attacks with one Linf budget, PGD first (the paper's)
ATTACKS = sorted((n for n, s in cas.ATTACKS.items() if s.gradient and s.norm == "linf"), key=lambda n: n != "pgd")
SETTINGS = ("models", "cls", "n", "attack", "eps", "steps")  # what a press of "Compute statistics" fixes


def params(names: list[str]) -> list[url_state.Param]:
    """The page's URL parameters (by default: the paper's three kinds of model, airplanes, PGD, 1%)."""
    default = [n for n in ("std", "at", "at-cas") if n in names] or names[:3]
    return [url_state.Param(P + "models", "models", default, pickers.model_list(names), ",".join),
            url_state.Param(P + "cls", "cls", "airplane", url_state.one_of(("all",) + tuple(cas.CLASSES))),
            url_state.Param(P + "n", "n", 512 if ON_GPU else 64, url_state.int_in(8, images.MAX_REQUEST_IMAGES)),
            url_state.Param(P + "attack", "attack", ATTACKS[0], url_state.one_of(tuple(ATTACKS))),
            url_state.Param(P + "eps", "eps", 8.0, url_state.float_in(0.5, 64.0), url_state.dump_number),
            url_state.Param(P + "steps", "steps", 10, url_state.int_in(1, 50)),
            url_state.Param(P + "thr", "thr", 1.0, url_state.float_in(0.0, 20.0), url_state.dump_number)]


def settings_form(names: list[str]) -> tuple[list[str], bool]:
    """Models, images and attack in one form; (the chosen models, whether the form was just sent)."""
    with st.form(P + "form"):
        chosen = st.multiselect("Models", names, key=P + "models",
                                help="Pick a standard model, an adversarially trained one and a CAS one to see "
                                     "all three of the paper's claims.")
        c1, c2, c3, c4 = st.columns(4)
        c1.selectbox("Images of class", ["all"] + list(cas.CLASSES), key=P + "cls",
                     help="The paper used the 1,000 test images of one class (airplane).")
        c2.number_input("Number of images", 8, images.MAX_REQUEST_IMAGES, step=8, key=P + "n",
                        help="A few hundred take about a minute per model on a laptop CPU.")
        c3.selectbox("Attack", ATTACKS, key=P + "attack", format_func=attack_label,
                     help="Mask-adaptive attacks apply to models with CAS or a relative (CIFS, EWAS, FSR); "
                          "other models get plain PGD.")
        c4.number_input("ε (/255)", 0.5, 64.0, step=0.5, key=P + "eps")
        st.slider("Attack steps", 1, 50, key=P + "steps")
        sent = st.form_submit_button("Compute statistics", type="primary")
    return chosen, sent


def threshold_slider() -> float:
    """The activation threshold, as a fraction of each image's strongest channel."""
    return st.slider("A channel counts as *activated* above this share of the image's strongest channel (%)",
                     0.0, 20.0, step=0.5, key=P + "thr",
                     help="The paper uses 1%. Changing it re-counts; it does not re-run the attacks.") / 100


def statistics(available: list[dict], ran: tuple) -> dict[str, cas_stats.ModelStats]:
    """Each chosen model's statistics for the settings of the last press (computed once per session);
    the page stops with the reason if a model or the settings cannot be used."""
    chosen, cls, n, attack, eps, steps = ran
    names = [m["name"] for m in available]
    results = {}
    try:
        for name in chosen:
            if name not in names:
                continue
            loaded = models.load_from_path(available[names.index(name)]["path"], name=name)
            request = compute.StatsRequest(loaded.key, cls, int(n), attack, float(eps), int(steps))
            results[name] = compute.channel_statistics(request, loaded.model, name, display=panels.progress_bar())
    except (ValueError, cas.CheckpointError) as e:
        st.error(str(e))
        st.stop()
    return results


def summary_columns() -> dict:
    """Column settings of the summary table: who and where pinned, each number column wide enough for its label."""
    config = {}
    for key, label in cas_stats.COLUMN_LABELS.items():
        if key in ("model", "point", "stage", "attack"):  # who and where: kept in view while scrolling
            config[key] = st.column_config.TextColumn(label, width=100, pinned=key != "attack")
        else:  # wide enough for the whole label
            width = 70 if label == "± SE" else 8 * len(label) + 30
            config[key] = st.column_config.NumberColumn(label, width=width, help=HELP.get(key.removesuffix("_se")),
                                                        format="%.1f" if "acc" in key else "%.4f")
    config["images"] = st.column_config.NumberColumn("Images", format="%d", width=70)
    return config


def summary_section(results: dict[str, cas_stats.ModelStats], threshold: float) -> None:
    """The summary table (per model, mask module and stage) and its CSV download."""
    table = compute.stats_table(results, threshold)
    st.subheader("Summary")
    st.caption("Per model and mask module (CAS, or its relative CIFS, EWAS or FSR; for a model without one: "
               "the same block; for EWAS and FSR, whose masks are element-wise, *after mask* is the masked "
               "map's spatial mean). *Magnitude*: average "
               "channel activation; *channels on*: the share of channels activated per image; *uniformity*: "
               "how evenly activation is spread over channels across images (1 = every channel equally "
               "often). *Clean* = natural test images, *attacked* = their adversarial versions. Each figure "
               f"comes with its standard error (± SE), from {cas_stats.BOOTSTRAP} bootstrap resamples of the "
               "images: differences within about two standard errors are noise.")
    st.dataframe(table, hide_index=True, width="stretch", column_config=summary_columns())
    st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(), "channel_statistics.csv",
                       "text/csv", on_click="ignore")


def claims_section(effects: list[dict], relatives: dict[str, str] | None = None) -> None:
    """Whether each of the paper's claims holds on these models, with its evidence; ``relatives``: the
    chosen models with one of CAS's relatives (name -> "CIFS", "EWAS" or "FSR"), which the claims leave out."""
    if not effects:
        return
    st.subheader("Do the paper's claims hold here?")
    if relatives:
        names = [f"{name} ({label})" for name, label in relatives.items()]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        st.caption(f"The paper's claims are about CAS: {listed}, with a relative of CAS, "
                   f"{'takes' if len(names) == 1 else 'take'} no part in them; the figures below show "
                   f"{'it' if len(names) == 1 else 'them'} too.")
    icons = {"holds": ":material/check_circle:", "does not hold": ":material/cancel:",
             "within noise": ":material/help:"}
    for e in effects:
        st.markdown(f"{icons[e['verdict']]} **{e['claim']}** — **{e['verdict']}**: {e['evidence']}.")
    st.caption("Each claim is a difference that should be above zero. The 95% interval comes from resampling "
               f"the images {cas_stats.BOOTSTRAP} times (the same draws for every model, which saw the same "
               "images): *holds* when the whole interval is above zero, *does not hold* when it is below, "
               "*within noise* when it contains zero — more images narrow it.")


def model_section(name: str, s: cas_stats.ModelStats, threshold: float, defense: str | None = None) -> None:
    """One model: its accuracies and, per mask module (of its ``defense``: "CAS", "CIFS", ... or None),
    the magnitude and frequency figures."""
    st.subheader(f"{name}: clean accuracy {s.clean_accuracy:.1f}%, under {attack_label(s.attack)} "
                 f"{s.adversarial_accuracy:.1f}% ({s.n} images)")
    tabs = st.tabs([f"{defense} module {p.name}" if defense and p.has_mask else p.name for p in s.points])
    for tab, p in zip(tabs, s.points):
        with tab:
            for stage in (["before", "after"] if p.has_mask else ["before"]):
                c1, c2 = st.columns(2)
                magnitude, frequency = figures.stats_figures(
                    p, stage, threshold, f"{stage} the {defense or 'CAS'} mask" if p.has_mask else "block output")
                c1.plotly_chart(magnitude, width="stretch", key=f"{P}{name}{p.name}{stage}m")
                c2.plotly_chart(frequency, width="stretch", key=f"{P}{name}{p.name}{stage}f")


FIGURES_CAPTION = (
    "Left: each channel's average activation, natural and adversarial curves each sorted from strongest to "
    "weakest (the paper's Figure 1) — red above blue means the attack makes channels fire harder. Right: on how "
    "many images each channel fires, channels in the natural order (the paper's uniformity figure) — a flatter "
    "red curve means the attack switches on channels that natural images of this class rarely use.")


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
    page_params = params(names)
    for message in url_state.load_from_url("channel_stats", page_params):
        st.warning(f"A setting in the link was ignored: {message}.")
    chosen, sent = settings_form(names)
    threshold = threshold_slider()
    url_state.write_to_url(page_params, extra_names=("present",))
    if sent:
        st.session_state[P + "ran"] = (tuple(chosen),) + tuple(st.session_state[P + k] for k in SETTINGS[1:])
    ran = st.session_state.get(P + "ran")
    if not ran or not chosen:
        st.info("Choose models and press **Compute statistics**.")
        st.stop()
    results = statistics(available, ran)
    summary_section(results, threshold)
    cards = {m["name"]: models.card_of(m["card"]) for m in available}
    labels = {name: models.defense_label(card) for name, card in cards.items()}
    claims_section(compute.paper_claims(results, cards, threshold),
                   {name: labels[name] for name in results if labels.get(name) not in (None, "CAS")})
    for name, s in results.items():
        model_section(name, s, threshold, labels.get(name))
    st.caption(FIGURES_CAPTION)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
