"""Attack Lab: one model, one image, one attack — and what it does to the channels inside the network."""
from __future__ import annotations

from urllib.parse import urlencode


import streamlit as st

from app.common import cache, images, lab, models, panels, pickers, presentation, url_state

P = "lab_"


def page() -> None:
    """The Attack Lab page: pickers, one attack, its verdict, images, probabilities and channels."""
    st.title(":material/target: Attack Lab")
    st.caption("Pick a model, an image and an attack. See whether a change too small to notice fools the model, "
               "and what it does to the channels inside the network — with and without CAS "
               "(Channel-wise Activation Suppressing).")

    available = models.list_available()
    MODEL = url_state.Param(P + "model", "model", models.default_model(available) or pickers.UPLOAD, str)
    PARAMS = ([MODEL, url_state.Param(P + "ckpt", "ckpt", "", str)]
              + pickers.image_params(P, {"idx": models.first_image(available)})
              + pickers.attack_params(P))
    CHART_PARAMS = pickers.chart_params(P)
    photo_link = url_state.first_run("lab") and st.query_params.get("src") in ("upload", "camera")
    for message in url_state.load_from_url("lab", PARAMS + CHART_PARAMS):
        st.warning(f"A setting in the link was ignored: {message}.")
    if photo_link:
        st.info("This link was made with an uploaded or camera photo, which a link cannot carry: "
                "add the photo again to see the same result.")

    with st.sidebar:
        st.header("Model")
        loaded = pickers.model_picker(P, available, st.sidebar)
        if loaded is not None:
            st.header("Attack")
            choice = pickers.attack_controls(P, loaded.model, st.sidebar)
        else:
            choice = None

    st.subheader("Image")
    image = pickers.image_picker(P)

    url_state.write_to_url(PARAMS + CHART_PARAMS)

    if loaded is None:
        st.info("No model is loaded yet: choose one in the sidebar, or upload a checkpoint there, to run an attack.",
                icon=":material/arrow_back:")
        st.stop()
    if image is None or choice is None:
        st.stop()

    try:
        result = cache.attack_image(loaded.key, loaded.model, image, choice)
    except ValueError as e:  # settings the library refuses
        st.error(f"The attack could not run: {e}")
        st.stop()

    st.subheader(f"Result: {choice.describe()} on {image.title}")
    panels.verdict(result)
    panels.image_row(result)
    if loaded.model.has_cas and lab.blind_to_mask(choice.attack) and not result.success:
        st.warning("**Careful: a failed attack is not proof of robustness here.** This model chooses its CAS "
                   "mask with an argmax, which hides the mask from the attack's gradient (*gradient masking*). "
                   "Run **soft-mask PGD** with the same budget for an honest test.")
        st.button("Try soft-mask PGD with these settings", key="btn_lab_try_soft",
                  on_click=lambda: st.session_state.update({P + "attack": "soft_mask_pgd"}))

    st.subheader("What the model predicts")
    panels.probability_chart(result, key="lab_probs")


    @st.fragment
    def channel_section(result: lab.LabResult) -> None:
        """Chart options rerun only this part, the charts and the link that holds the options: the attack's
        result is reused as it is."""
        sort, threshold = pickers.chart_options(P)
        url_state.write_to_url(PARAMS + CHART_PARAMS)
        panels.channel_charts(result, sort, threshold, key="lab_ch")

        st.subheader("Share and export")
        query = url_state.url_dict(PARAMS + CHART_PARAMS)
        if presentation.is_on():  # a link for a slide opens the way it is shown now
            query[presentation.KEY] = "1"
        base = (getattr(st.context, "url", None) or "").split("?")[0]
        photo = " Photos are not part of the link." if image.slug == "photo" else ""
        st.markdown("The address bar holds every setting of this view (model, image, attack, seed): copy it to "
                    "share exactly this result." + photo)
        st.code((base or "") + ("?" + urlencode(query) if query else ""), language=None)


    st.subheader("Inside the network: channel activations")
    channel_section(result)

    stem = f"{image.slug}_{choice.attack}_{loaded.name or 'model'}"
    c1, c2, c3 = st.columns(3)
    c1.download_button("Adversarial image (PNG, 32×32)", images.png_bytes(result.x_adv), f"{stem}.png",
                       "image/png", key="btn_lab_png", on_click="ignore",
                       help="8-bit PNG: pixel values rounded to /255.")
    c2.download_button("Adversarial image (exact, .npy)", images.npy_bytes(result.x_adv), f"{stem}.npy",
                       "application/octet-stream", key="btn_lab_npy", on_click="ignore",
                       help="float32 array (3, 32, 32) in [0, 1]; load with numpy.load.")
    c3.download_button("Channel values (CSV)", lab.channel_table(result, loaded.label).to_csv(index=False),
                       f"{stem}_channels.csv", "text/csv", key="btn_lab_csv", on_click="ignore")
    st.caption(f"The attack took {result.seconds:.2f} s.")


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
