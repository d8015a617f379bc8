"""Attack Lab: one model, one image, one attack — and what it does to the channels inside the network."""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

import cas
from app.common import compute, image_attack, images, models, panels, pickers, presentation, url_state
from app.common.defense_text import text_of
from app.common.pages import FROM_LECTURE, prefix
from cas import robustness

P = prefix("attack_lab")


def params(available: list[dict]) -> list[url_state.Param]:
    """The page's URL parameters: model, checkpoint path, image, attack and the charts' options."""
    return ([url_state.Param(P + "model", "model", models.default_model(available) or pickers.UPLOAD, str),
             url_state.Param(P + "ckpt", "ckpt", "", str)]
            + pickers.image_params(P, {"idx": models.first_image(available)})
            + pickers.attack_params(P) + pickers.chart_params(P))


def load_settings(page_params: list[url_state.Param]) -> None:
    """The link's settings into session state, with a note for each one ignored and for a photo link."""
    photo_link = url_state.first_run("lab") and st.query_params.get("src") in ("upload", "camera")
    for message in url_state.load_from_url("lab", page_params):
        st.warning(f"A setting in the link was ignored: {message}.")
    if photo_link:
        st.info("This link was made with an uploaded or camera photo, which a link cannot carry: "
                "add the photo again to see the same result.")


def sidebar(available: list[dict]) -> tuple[models.LoadedModel | None, image_attack.AttackChoice | None]:
    """The model and attack pickers; (loaded model or None, attack choice or None)."""
    with st.sidebar:
        st.header("Model")
        loaded = pickers.model_picker(P, available, st.sidebar)
        if loaded is None:
            return None, None
        st.header("Attack")
        return loaded, pickers.attack_controls(P, loaded.model, st.sidebar)


def attack_result(loaded: models.LoadedModel, image: pickers.ImageChoice,
               choice: image_attack.AttackChoice) -> image_attack.LabResult:
    """The attack's result (computed once per model, image and settings), or the page stops with the
    library's reason."""
    try:
        return compute.attack_image(compute.image_request(loaded.key, image.x, image.label, choice),
                                    loaded.model, image.x, title=image.title, display=panels.progress_bar())
    except ValueError as e:  # settings the library refuses
        st.error(f"The attack could not run: {e}")
        st.stop()


FRACTIONS = (("a tenth", 0.1), ("a fifth", 0.2), ("a quarter", 0.25), ("a third", 1 / 3), ("half", 0.5),
             ("two thirds", 2 / 3), ("three quarters", 0.75), ("nine in ten", 0.9))


def in_words(share: float) -> str:
    """A share (0-1) as the nearest plain fraction: 0.31 -> 'a third'."""
    return min(FRACTIONS, key=lambda f: abs(f[1] - share))[0]


def card_sentence(card: dict, attack: str) -> str:
    """What the card's accuracy under ``attack`` means, in one line; empty when the card has none."""
    spec = cas.ATTACKS.get(attack)
    key = spec.card_key if spec else None
    acc = (card.get("accuracy") or {}).get(key) if key else None
    if acc is None:
        return ""
    n = ((card.get("evaluation") or {}).get("counts") or card.get("counts") or {}).get(key)
    images_text = f" of {n:,} test images" if n else ""
    fall = 100 - float(acc)
    text = (f"**What its card says:** under {robustness.column(key)} this model keeps {float(acc):.1f}% of its "
            f"answers right{images_text}, so {fall:.0f}% of images (about {in_words(fall / 100)}) still fall to "
            "it: one fooled image does not contradict that.")
    soft = (card.get("accuracy") or {}).get("soft_mask_pgd20")
    if soft is not None and key != "soft_mask_pgd20":
        text += f" Soft-mask PGD-20, which sees the mask, leaves {float(soft):.1f}%."
    return text


def verdict_section(result: image_attack.LabResult, loaded: models.LoadedModel, image: pickers.ImageChoice) -> None:
    """Verdict, images, the gradient-masking warning and the probabilities."""
    st.subheader(f"Result: {result.choice.describe()} on {image.title}")
    panels.verdict(result)
    if loaded.model.has_cas and image_attack.blind_to_mask(result.choice.attack):
        line = card_sentence(loaded.card, result.choice.attack)
        if line:
            st.markdown(line)
    panels.image_row(result)
    if loaded.model.has_cas and image_attack.blind_to_mask(result.choice.attack) and not result.success:
        st.warning("**Careful: a failed attack is not proof of robustness here.** This model "
                   f"{text_of(loaded.model.defense).rule}, which hides the mask from the attack's gradient "
                   "(*gradient masking*). Run **soft-mask PGD** with the same budget for an honest test.")
        st.button("Try soft-mask PGD with these settings", key=pickers.button_key(P, "try_soft"),
                  on_click=lambda: st.session_state.update({P + "attack": "soft_mask_pgd"}))
    st.subheader("What the model predicts")
    panels.probability_chart(result, key="lab_probs")


@st.fragment
def channel_section(result: image_attack.LabResult, page_params: list[url_state.Param], is_photo: bool) -> None:
    """Chart options rerun only this part, the charts and the link that holds the options: the attack's
    result is reused as it is. The last mask module is shown unless the user picks another."""
    sort, threshold = pickers.chart_options(P)
    url_state.write_to_url(page_params)
    panels.channel_charts(result, sort, threshold, key=pickers.value_key(P, "module"))

    st.subheader("Share and export")
    query = url_state.url_dict(page_params)
    if presentation.is_on():  # a link for a slide opens the way it is shown now
        query[presentation.KEY] = "1"
    base = (getattr(st.context, "url", None) or "").split("?")[0]
    photo = " Photos are not part of the link." if is_photo else ""
    st.markdown("The address bar holds every setting of this view (model, image, attack, seed): copy it to "
                "share exactly this result." + photo)
    st.code((base or "") + ("?" + urlencode(query) if query else ""), language=None)


def downloads(result: image_attack.LabResult, loaded: models.LoadedModel, image: pickers.ImageChoice) -> None:
    """The adversarial image (PNG and exact), the channel values (CSV) and the attack's time. The files
    are made when a button is clicked (once per result for the server), not on every page run."""
    stem = f"{image.slug}_{result.choice.attack}_{loaded.name or 'model'}"
    label = loaded.label

    def file(i: int):
        return lambda: images.download_files(result, label)[i]

    c1, c2, c3 = st.columns(3)
    c1.download_button("Adversarial image (PNG, 32×32)", file(0), f"{stem}.png",
                       "image/png", key=pickers.button_key(P, "png"), on_click="ignore",
                       help="8-bit PNG: pixel values rounded to /255.")
    c2.download_button("Adversarial image (exact, .npy)", file(1), f"{stem}.npy",
                       "application/octet-stream", key=pickers.button_key(P, "npy"), on_click="ignore",
                       help="float32 array (3, 32, 32) in [0, 1]; load with numpy.load.")
    c3.download_button("Channel values (CSV)", file(2),
                       f"{stem}_channels.csv", "text/csv", key=pickers.button_key(P, "csv"), on_click="ignore")
    st.caption(f"The attack took {result.seconds:.2f} s.")


def from_the_lecture(loaded: models.LoadedModel, image: pickers.ImageChoice) -> bool:
    """Whether this view continues the Lecture (its model and image, set by its last step); if so, say so."""
    model, index = st.session_state.get(FROM_LECTURE) or (None, None)
    if model is None or loaded.name != model or image.slug != f"cifar{index}":
        return False
    st.info(f"**Continuing the lecture:** the same image ({image.title}), the same model (`{model}`), plain PGD as "
            f"in steps 4 and 5, the lecture's {st.session_state.get(P + 'thr', pickers.THRESHOLD):g}% switched-on "
            f"line, and the CAS module the lecture showed, the last one (shown below; the model's other CAS "
            "module is one click away above its chart). Change anything in the sidebar to explore.",
            icon=":material/school:")
    return True


def page() -> None:
    """The Attack Lab page: pickers, one attack, its verdict, images, probabilities and channels."""
    st.title(":material/target: Attack Lab")
    st.caption("Pick a model, an image and an attack. See whether a change too small to notice fools the model, "
               "and what it does to the channels inside the network — with and without CAS "
               "(Channel-wise Activation Suppressing) or one of its relatives (CIFS, EWAS, FSR).")
    available = models.list_available()
    page_params = params(available)
    load_settings(page_params)
    loaded, choice = sidebar(available)
    st.subheader("Image")
    image = pickers.image_picker(P)
    url_state.write_to_url(page_params)
    if loaded is None:
        st.info("No model is loaded yet: choose one in the sidebar, or upload a checkpoint there, to run an attack.",
                icon=":material/arrow_back:")
        st.stop()
    if image is None or choice is None:
        st.stop()
    from_the_lecture(loaded, image)
    result = attack_result(loaded, image, choice)
    with panels.drawing_turn():
        verdict_section(result, loaded, image)
        st.subheader("Inside the network: channel activations")
        channel_section(result, page_params, image.slug == "photo")
        downloads(result, loaded, image)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
