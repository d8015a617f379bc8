"""Lecture: the paper's story in six steps, each a live attack on the bundled models, each step a link.

The steps follow one CIFAR-10 test image through the standard model (``std``), adversarial training
(``at``) and adversarial training with CAS (``at-cas``): a clean image and its channels; PGD flips the
standard model and lights its channels up (the paper's first finding); adversarial training lowers the
magnitudes but channels are still switched on (the second finding); the CAS mask suppresses them; plain
PGD fails on the CAS model; soft-mask PGD succeeds (gradient masking, and why honest evaluation needs
adaptive attacks). ``?step=3`` opens step 3; ``?present=1`` adds presentation mode.

What each step says and draws is :mod:`app.common.lecture_story` (plain Python, no Streamlit), so
``tests/test_lecture.py`` checks every claim on the bundled models exactly as the page shows it; this
file is the page.
"""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

import cas
from app.common import compute, image_attack, images, join, models, panels, presentation, url_state
from app.common import lecture_figures as lf
from app.common.lecture_story import (AUTHORS, CARD_COLOURS, GLOSSARY, IMAGE_CLASS, MODEL_NAMES, PROTOCOLS,
                                      RUNS, SOFT, STEPS, THRESHOLD, TRAJECTORY, Step, caption, card_figures,
                                      card_rows, claim, figure, find_image, model_name, step_text,
                                      trajectory, trajectory_choices)
from app.common.pages import FROM_LECTURE, prefix
from app.common.pickers import ImageChoice, button_key

P = prefix("lecture")


# -- the page --------------------------------------------------------------------------------------------

def _go(step: int) -> None:
    st.session_state[P + "step"] = step


def navigation(step: int) -> None:
    """Title, progress through the steps, Back and Next."""
    n = len(STEPS)
    st.title(":material/school: Lecture: adversarial examples and CAS")
    st.progress(step / n, text=f"Step {step} of {n}: **{STEPS[step - 1].title}**")
    back, _, forward = st.columns([1, 3, 1])
    back.button("Back", icon=":material/arrow_back:", key=button_key(P, "back"), disabled=step == 1,
                on_click=_go, args=(step - 1,), width="stretch")
    forward.button("Next", icon=":material/arrow_forward:", key=button_key(P, "next"), disabled=step == n,
                   on_click=_go, args=(step + 1,), width="stretch", type="primary")


def lecture_image() -> ImageChoice:
    """The lecture's test image in this CIFAR-10 copy; the page stops with a message if it is missing."""
    x_all, y_all = images.cifar_test_or_stop()
    index = find_image(x_all, y_all)
    if index is None:
        st.error(f"The lecture's test image (a {IMAGE_CLASS}) is not in this CIFAR-10 copy's test split.")
        st.stop()
    return ImageChoice(x_all[index], int(y_all[index]), f"CIFAR-10 test image #{index} ({IMAGE_CLASS})",
                       f"cifar{index}")


def bundled_models(available, step: Step) -> dict[str, models.LoadedModel]:
    """The bundled models the runs of ``step`` need, by name, from ``available``
    (:func:`models.list_available`); the page stops with a message if one is missing."""
    available = {m["name"]: m for m in available}
    needed = {model for model, _ in step.runs().values()}
    missing = sorted(needed - set(available))
    if missing:
        st.info(f"The lecture runs on the bundled models; missing here: {', '.join(missing)}. "
                + models.NO_MODELS_MESSAGE)
        st.stop()
    return {name: models.load_from_path(available[name]["path"], name=name) for name in needed}


def bundled_cards(available) -> dict[str, dict]:
    """The lecture's models' cards in ``available`` (:func:`models.list_available`), by name."""
    return {m["name"]: m.get("card", {}) for m in available if m["name"] in MODEL_NAMES}


def _compute(run_model: models.LoadedModel, image: ImageChoice, choice, display) -> image_attack.LabResult:
    return compute.attack_image(compute.image_request(run_model.key, image.x, image.label, choice),
                                run_model.model, image.x, title=image.title, display=display)


def start_step(step: int, loaded: dict, image: ImageChoice) -> dict:
    """Queue the attacks of the runs step ``step`` shows and its claim looks at (and step 5's attack
    through its steps), all at once: the workers run them while the page goes on. Returns those runs:
    run name -> (model, attack)."""
    runs = {run: (loaded[model], choice) for run, (model, choice) in STEPS[step - 1].runs().items()}
    jobs = list(runs.values())
    if step == 5:
        jobs += [(loaded[RUNS[TRAJECTORY][0]], choice) for choice in trajectory_choices()]
    compute.start_attacks([(compute.image_request(m.key, image.x, image.label, choice), m.model, image.x)
                           for m, choice in jobs])
    return runs


def step_results(runs: dict, image: ImageChoice) -> dict[str, image_attack.LabResult]:
    """The results of :func:`start_step`'s runs, by run name (each computed once, through compute)."""
    display = panels.progress_bar()
    return {run: _compute(m, image, choice, display) for run, (m, choice) in runs.items()}


def steps_through(loaded: dict, image: ImageChoice) -> list[image_attack.LabResult]:
    """Plain PGD on the CAS model stopped after 1, 2, ... 20 steps (:func:`trajectory_choices`)."""
    display = panels.progress_bar()
    return [_compute(loaded[RUNS[TRAJECTORY][0]], image, choice, display) for choice in trajectory_choices()]


def terms(step: int) -> None:
    """The step's terms, each with its definition on hover."""
    words = STEPS[step - 1].terms
    if words:
        cols = st.columns(len(words) + 1)
        cols[0].caption("Terms (hover):")
        for col, word in zip(cols[1:], words):
            col.markdown(f"**{word}**", help=GLOSSARY[word])


def claim_box(step: int, results: dict[str, image_attack.LabResult]) -> None:
    """The step's model and attack, and its claim, in the pages' colours: red when the attack succeeds,
    green when the defence holds, blue for a clean image; a warning when the claim does not hold."""
    model, choice = RUNS[STEPS[step - 1].run]
    holds, sentence = claim(step, results)
    r = results[STEPS[step - 1].run]
    st.subheader(f"{model_name(model)} · {choice.describe()}")
    if not holds:
        st.warning(sentence + " (On this run the step's claim does not hold.)", icon=":material/help:")
    elif not r.attacked:
        st.info(sentence, icon=":material/image:")
    elif r.success:
        st.error(sentence, icon=":material/bolt:")
    else:
        st.success(sentence, icon=":material/shield:")


def image_strip(result: image_attack.LabResult) -> None:
    """Clean image, perturbation and adversarial image; two per row in presentation mode (at 384 px)."""
    size = presentation.image_size(192)
    shown = [(result.x_nat, "Clean image (32×32, enlarged)")]
    if result.attacked:
        pert, factor = images.perturbation_image(result.delta)
        shown += [(result.x_adv, "Adversarial image (what the model gets)"),
                  (pert, f"The change × {factor:.0f} (grey = none); L∞ = {result.linf255:.1f}/255")]
    per_row = 2 if presentation.is_on() else 3
    for i in range(0, len(shown), per_row):
        cols = st.columns(per_row)
        for col, (x, text) in zip(cols, shown[i:i + per_row]):
            col.image(images.enlarged_png(x, size), caption=text, width=size, output_format="PNG")


def chart(fig, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def evidence(through: list[image_attack.LabResult], cards: dict) -> None:
    """Step 5: the head's guess through plain PGD's steps (:func:`steps_through`), and the cards' accuracies."""
    t = trajectory(through)
    name = cas.CLASSES[t["label"]]
    guesses = sorted({cas.CLASSES[g] for g in t["guesses"]})
    note = f"the head's guess at steps 1-{len(t['guesses'])}: {', '.join(guesses)}"
    chart(lf.head_guess_figure(t["steps"], t["final"], t["head"], name, note), "lec_steps")
    rows = card_rows(cards)
    if rows:
        chart(lf.card_accuracy_figure(rows, CARD_COLOURS), "lec_cards_5")


def protocols(results: dict, cards: dict) -> None:
    """The last step: the paper's protocol, the project's joint PGD and soft-mask PGD on this image, with
    the cards' accuracies where they have one."""
    k = card_figures(cards).get("at-cas", {})
    st.markdown("**Three adaptive protocols on AT + CAS** (this image; the card's accuracy on its test images):")
    cols = st.columns(len(PROTOCOLS))
    for col, (run, key) in zip(cols, PROTOCOLS):
        r = results[run]
        box = col.error if r.success else col.success
        card = (f"card: {k[key][0]:.1f}% ± {k[key][1]:.1f} on {k[key][2]:,} images" if key in k
                else "its card has no figure for it")
        box(f"**{r.choice.describe()}**: says **{cas.CLASSES[r.pred_adv]}** "
            f"({'fooled' if r.success else 'not fooled'}). {card}.",
            icon=":material/bolt:" if r.success else ":material/shield:")
    st.markdown(protocol_sentence())


def protocol_sentence() -> str:
    """Why a protocol's step size and loss decide its number, with the registry's own settings."""
    a, s = AUTHORS.preset, SOFT.preset
    return (f"A protocol's number depends on its step size and its loss. The paper's {a['steps']} steps of "
            f"{a['step_size']:g} move a pixel at most {a['steps'] * a['step_size']:.2f} in all, against a budget of "
            f"{a['eps']:g}: the attack spends its steps getting to the budget's corners. The project's "
            f"{s['steps']} steps of {s['step_size'] * 255:g}/255 can cross the budget {s['steps'] * s['step_size'] / (8 / 255):.0f} "
            "times over. And a loss that never sees the argmax mask switch pushes on a mask that stays put; "
            "a loss through the (soft) mask follows the switch.")


def continue_button(image: ImageChoice, index: int) -> None:
    """Open the Attack Lab on the lecture's image, model, module and threshold."""
    if st.button("Continue in the Attack Lab with this image", icon=":material/target:", type="primary",
                 key=button_key(P, "to_lab")):
        model, choice = RUNS["cas_pgd"]
        lab = prefix("attack_lab")
        st.session_state.update({lab + "model": model, lab + "ckpt": "", lab + "src": "cifar", lab + "cls": "all",
                                 lab + "idx": index, lab + "attack": choice.attack, lab + "thr": THRESHOLD,
                                 lab + "sort": "natural", lab + "module": None,
                                 FROM_LECTURE: (model, index)})
        for key, value in choice.values:  # the widgets' values (an untargeted attack's target is a word)
            st.session_state[lab + key] = "untargeted" if key == "target" and value is None else value
        st.switch_page("views/attack_lab.py")


def step_view(step: int, results: dict, through: list | None, cards: dict) -> None:
    """One step's images, its charts and what they show (``through``: step 5's :func:`steps_through`)."""
    if step == len(STEPS):
        left, right = st.columns(2)
        for col, run in zip((left, right), ("cas_pgd", "cas_soft")):
            r = results[run]
            size = presentation.image_size(192)
            col.image(images.enlarged_png(r.x_adv, size), width=size, output_format="PNG",
                      caption=f"Adversarial image, {r.choice.describe()}")
        chart(figure(step, results)[0], "lec_ch_6")
        st.caption(caption(step, results))
        rows = card_rows(cards)
        if rows:
            chart(lf.card_accuracy_figure(rows, CARD_COLOURS), "lec_cards_6")
        protocols(results, cards)
        return
    image_strip(results[STEPS[step - 1].run])
    for i, fig in enumerate(figure(step, results)):
        chart(fig, f"lec_ch_{step}_{i}")
    if step == 5:
        evidence(through, cards)
    st.caption(caption(step, results))


def step_links(step: int) -> None:
    """A link to this step (for a slide; a QR code in presentation mode) and the list of all steps."""
    st.divider()
    mode = {presentation.KEY: "1"} if presentation.is_on() else {}
    if presentation.is_on():
        link = join.join_link(getattr(st.context, "url", None), "lecture", {"step": str(step), "present": "1"})
        st.markdown("**Follow on your own screen:** scan or type")
        if link.url:
            st.image(join.qr_png(link.url), width=presentation.image_size(192), caption="This step's link")
            st.code(link.url, language=None)
        else:
            st.info(link.note)
    else:
        base = (getattr(st.context, "url", None) or "").split("?")[0]
        st.markdown("**Link to this step** (for a slide):")
        st.code(base + "?" + urlencode({"step": str(step), **mode}), language=None)
    with st.expander("All steps"):
        st.markdown("\n".join(f"{i}. [{other.title}](?{urlencode({'step': i, **mode})})"
                               + (" — *you are here*" if i == step else "") for i, other in enumerate(STEPS, start=1)))


def page() -> None:
    """The Lecture page: one step of the story, its live view, its claim, Back and Next."""
    page_params = [url_state.Param(P + "step", "step", 1, url_state.int_in(1, len(STEPS)))]
    for message in url_state.load_from_url("lecture", page_params):
        st.warning(f"A setting in the link was ignored: {message}.")
    step = st.session_state[P + "step"]
    image = lecture_image()
    available = models.list_available()
    loaded = bundled_models(available, STEPS[step - 1])
    runs = start_step(step, loaded, image)  # its attacks run while the page draws its navigation
    navigation(step)
    url_state.write_to_url(page_params, extra_names=(presentation.KEY,))
    cards = bundled_cards(available)
    results = step_results(runs, image)
    through = steps_through(loaded, image) if step == 5 else None
    with panels.drawing_turn():
        st.markdown(step_text(step, results, cards))
        terms(step)
        claim_box(step, results)
        step_view(step, results, through, cards)
        if step == len(STEPS):
            continue_button(image, int(image.slug.removeprefix("cifar")))
        step_links(step)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
