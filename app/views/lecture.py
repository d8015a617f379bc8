"""Lecture: the paper's story in six steps, each a live attack on the bundled models, each step a link.

The steps follow one CIFAR-10 test image through the standard model (``std``), adversarial training
(``at``) and adversarial training with CAS (``at-cas``): a clean image and its channels; PGD flips the
standard model and lights its channels up (the paper's first finding); adversarial training lowers the
magnitudes but channels are still switched on (the second finding); the CAS mask suppresses them; plain
PGD fails on the CAS model; soft-mask PGD succeeds (gradient masking, and why honest evaluation needs
adaptive attacks). ``?step=3`` opens step 3; ``?present=1`` adds presentation mode.

Everything that decides whether a step's claim holds is plain Python (:func:`claim`, no Streamlit), so
``tests/test_lecture.py`` checks every claim on the bundled models exactly as the page shows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
import streamlit as st

import cas
from app.common import compute, figures, image_attack, images, models, panels, presentation, url_state
from app.common.pages import prefix
from app.common.pickers import ImageChoice, button_key

P = prefix("lecture")
# The lecture's test image: an index of the CIFAR-10 test split, in the order of the copy the app loads
# (the offline image-folder copy, sorted by class); IMAGE_CLASS is its label, checked on the page.
# Chosen by scripts/lecture_images.py: of the first 400 test images of the fixed shuffle, 115 passed a
# batched screen (std right on the clean image and wrong under PGD, AT right, AT+CAS right under plain PGD
# and wrong under soft-mask PGD); the first six of those were run through every step exactly as the page
# runs them, with seeds 0, 1 and 2 and the attacks' gradients in bf16 and in fp32, and every claim held on
# all six. This deer had the largest smallest margin (0.99: the models are at least 99% sure of what each
# step needs them to say); the others were #5916 (dog, 0.95), #8506 (ship, 0.98), #8606 (ship, 0.94),
# #4869 (deer, 0.86), #137 (airplane, 0.85).
IMAGE = 4919
IMAGE_CLASS = "deer"
# The same image's colours averaged over a 4x4 grid (R, G, B planes), to find it in a CIFAR-10 copy that
# orders the test images differently (the torchvision download): see find_image.
IMAGE_COLOURS = (126, 148, 164, 147, 189, 212, 215, 215, 209, 233, 224, 227, 144, 173, 176, 167,
                 131, 159, 170, 154, 192, 212, 217, 219, 214, 234, 206, 226, 154, 161, 145, 169,
                 81, 102, 106, 102, 110, 126, 127, 140, 123, 146, 142, 146, 94, 100, 93, 103)
SAME_IMAGE = 3.0  # mean difference of those colours (out of 255) below which two copies are the same image
THRESHOLD = 10.0  # % of the strongest channel above which a channel counts as switched on

PGD = cas.ATTACKS["pgd"]
SOFT = cas.ATTACKS["soft_mask_pgd"]


def _choice(spec) -> image_attack.AttackChoice:
    """The attack as the evaluator runs it (its registry preset: 20 steps of 2/255), ε = 8/255, seed 0."""
    preset = spec.preset
    return image_attack.AttackChoice(spec.name, eps=8.0, steps=preset["steps"], step=preset["step_size"] * 255)


# run name -> (bundled model, attack)
RUNS = {
    "std_clean": ("std", image_attack.AttackChoice(image_attack.NONE)),
    "std_pgd": ("std", _choice(PGD)),
    "at_pgd": ("at", _choice(PGD)),
    "cas_pgd": ("at-cas", _choice(PGD)),
    "cas_soft": ("at-cas", _choice(SOFT)),
}


@dataclass(frozen=True)
class Step:
    title: str
    run: str  # the run of RUNS this step shows
    text: str  # one short paragraph
    needs: tuple[str, ...]  # the runs its claim looks at


STEPS = [
    Step("A clean image and its channels", "std_clean",
         "A network sees a 32×32 image. Inside, its last block has 128 **channels**, feature detectors, each "
         "giving one number for the whole image (its average activation). Here is the standard model on a clean "
         "test image: each bar is one channel, sorted from the strongest to the weakest.",
         ("std_clean",)),
    Step("An attack flips it and lights the channels up", "std_pgd",
         "**PGD** changes every pixel by at most 8/255, too little to see, in the direction that most increases "
         "the model's loss (20 gradient steps). The standard model now gets it wrong. Inside, the red bars "
         "(adversarial) stand above the blue ones (clean): **adversarial examples activate channels more, "
         "with larger magnitudes** — the paper's first finding.",
         ("std_pgd",)),
    Step("Adversarial training lowers the magnitudes", "at_pgd",
         "**Adversarial training** (AT) trains on such attacked images. The same attack on the AT model barely "
         "raises the activation — the magnitude problem is fixed. But the attack still **switches on channels "
         "across the board** instead of the few the clean image uses: the paper's second finding, which AT "
         "leaves open.",
         ("std_pgd", "at_pgd")),
    Step("CAS suppresses the channels", "cas_pgd",
         "**Channel-wise Activation Suppressing** (CAS) adds a small classifier inside the block. Its guess of "
         "the class picks one row of its weights, and every channel is multiplied by its weight in that row: "
         "the **mask** (middle panel). Weights near zero silence a channel. Under the same attack, far fewer "
         "channels get through the mask than before it.",
         ("cas_pgd",)),
    Step("Plain PGD fails on the CAS model", "cas_pgd",
         "The CAS model keeps the right answer under plain PGD, and on the bundled models plain PGD says CAS "
         "adds about 30 points of robustness. But the mask is chosen by an **argmax** over the head's guess: a "
         "gradient cannot see that choice switch, so plain PGD walks the wrong way. A failed attack is not "
         "proof of robustness.",
         ("cas_pgd",)),
    Step("Soft-mask PGD succeeds: gradient masking", "cas_soft",
         "**Soft-mask PGD** replaces the argmax row by a softmax-weighted mix of all rows for the gradient "
         "only; the real model judges every step. It sees how the mask would switch, flips the head's guess, "
         "and the wrong channels pass. The robustness was **gradient masking**: honest evaluation needs "
         "**adaptive attacks** built for the defence.",
         ("cas_pgd", "cas_soft")),
]


# -- the claims (no Streamlit) ---------------------------------------------------------------------------

def figures_of(result: image_attack.LabResult, threshold: float = THRESHOLD) -> dict:
    """Summary figures of the last CAS point (or last block): total activation and channels switched on,
    clean (``nat``) and adversarial (``adv``), before and after the mask."""
    view = result.modules[-1]
    out = {}
    for stage, values in (("before", view.before), ("after", view.after)):
        for i, who in enumerate(("nat", "adv")):
            s = image_attack.module_summary(values[i], threshold / 100)
            out[f"total_{stage}_{who}"] = s["total"]
            out[f"active_{stage}_{who}"] = s["active"]
    out["channels"] = view.before.shape[1]
    out["rise"] = out["total_before_adv"] / max(out["total_before_nat"], 1e-12)
    return out


def claim(step: int, results: dict[str, image_attack.LabResult], threshold: float = THRESHOLD) -> tuple[bool, str]:
    """Step ``step``'s claim (1-based): whether it holds, and the sentence the page shows. ``results``:
    run name -> result, at least the step's :attr:`Step.needs`."""
    c = cas.CLASSES
    if step == 1:
        r = results["std_clean"]
        f = figures_of(r, threshold)
        return (r.pred_nat == r.label,
                f"The standard model says **{c[r.pred_nat]}** ({100 * r.probs[0, r.pred_nat]:.0f}%); the image "
                f"shows a {c[r.label]}. {f['active_before_nat']} of {f['channels']} channels are switched on.")
    if step == 2:
        r = results["std_pgd"]
        f = figures_of(r, threshold)
        return (r.pred_nat == r.label and r.pred_adv != r.label and f["rise"] > 1.2,
                f"Under PGD the standard model says **{c[r.pred_adv]}** ({100 * r.probs[1, r.pred_adv]:.0f}%). "
                f"Total activation of the last block {f['total_before_nat']:.1f} → {f['total_before_adv']:.1f} "
                f"(×{f['rise']:.2f}): the channels fire harder.")
    if step == 3:
        std_rise = figures_of(results["std_pgd"], threshold)["rise"]
        r = results["at_pgd"]
        f = figures_of(r, threshold)
        return (f["rise"] < std_rise and f["active_before_adv"] >= f["active_before_nat"],
                f"AT: total activation ×{f['rise']:.2f} under attack (standard model: ×{std_rise:.2f}), but "
                f"channels switched on {f['active_before_nat']} → {f['active_before_adv']} of {f['channels']}. "
                f"Under PGD the AT model says **{c[r.pred_adv]}**.")
    r = results["cas_pgd"]
    if step == 4:
        f = figures_of(r, threshold)
        return (f["active_after_adv"] < f["active_before_adv"],
                f"Adversarial image: {f['active_before_adv']} of {f['channels']} channels switched on before the "
                f"mask, **{f['active_after_adv']}** after it.")
    if step == 5:
        return (r.pred_nat == r.label and r.pred_adv == r.label,
                f"Under plain PGD the CAS model still says **{c[r.pred_adv]}** "
                f"({100 * r.probs[1, r.pred_adv]:.0f}%): the attack failed.")
    r = results["cas_soft"]
    return (r.pred_adv != r.label,
            f"Under soft-mask PGD, same budget and steps, the CAS model says **{c[r.pred_adv]}** "
            f"({100 * r.probs[1, r.pred_adv]:.0f}%): the attack succeeded.")


def run_all(loaded: dict, x: np.ndarray, label: int) -> dict[str, image_attack.LabResult]:
    """Every run of :data:`RUNS` on one image, without Streamlit (``loaded``: model name -> model)."""
    return {name: image_attack.attack_image(loaded[model], x, choice, label) for name, (model, choice) in RUNS.items()}


def colours(x: np.ndarray) -> np.ndarray:
    """Images (N, 3, 32, 32) -> their colours averaged over a 4x4 grid, (N, 48)."""
    return x.reshape(len(x), 3, 4, 8, 4, 8).astype(np.float32).mean((3, 5)).reshape(len(x), -1)


def find_image(x_all: np.ndarray, y_all: np.ndarray) -> int | None:
    """The lecture image's index in this CIFAR-10 copy: :data:`IMAGE` when it is the same picture, else
    the picture whose coarse colours match (another copy's order, or its JPEG rounding); None if absent."""
    target = np.asarray(IMAGE_COLOURS, dtype=np.float32)
    if IMAGE < len(y_all) and np.abs(colours(x_all[IMAGE:IMAGE + 1])[0] - target).mean() < SAME_IMAGE:
        return IMAGE
    pool = np.flatnonzero(y_all == cas.CLASSES.index(IMAGE_CLASS))
    if not len(pool):
        return None
    distance = np.abs(colours(x_all[pool]) - target).mean(1)
    best = int(distance.argmin())
    return int(pool[best]) if distance[best] < SAME_IMAGE else None


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


def bundled_models() -> dict[str, models.LoadedModel]:
    """The bundled models the runs need, by name; the page stops with a message if one is missing."""
    available = {m["name"]: m for m in models.list_available()}
    needed = {model for model, _ in RUNS.values()}
    missing = sorted(needed - set(available))
    if missing:
        st.info(f"The lecture runs on the bundled models; missing here: {', '.join(missing)}. "
                + models.NO_MODELS_MESSAGE)
        st.stop()
    return {name: models.load_from_path(available[name]["path"], name=name) for name in needed}


def step_results(step: Step, loaded: dict, image: ImageChoice) -> dict[str, image_attack.LabResult]:
    """The runs ``step`` shows and its claim looks at, by run name (computed once per session)."""
    display = panels.progress_bar()
    out = {}
    for run, (model, choice) in RUNS.items():
        if run in step.needs or run == step.run:
            m = loaded[model]
            out[run] = compute.attack_image(compute.image_request(m.key, image.x, image.label, choice),
                                            m.model, image.x, title=image.title, display=display)
    return out


def claim_box(step: int, results: dict[str, image_attack.LabResult]) -> None:
    """The step's model and attack, and its claim: green when it holds on this run."""
    model, choice = RUNS[STEPS[step - 1].run]
    holds, sentence = claim(step, results)
    st.subheader(f"`{model}` · {choice.describe()}")
    box = st.success if holds else st.warning
    box(sentence + ("" if holds else " (On this run the step's claim does not hold.)"),
        icon=":material/check_circle:" if holds else ":material/help:")


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
        for col, (x, caption) in zip(cols, shown[i:i + per_row]):
            col.image(images.upscale(x, size), caption=caption, width=size)


def channel_chart(result: image_attack.LabResult, key: str, height: int | None = None, narrow: bool = False) -> None:
    """The channel chart of the last CAS point (or block), in the clean image's order."""
    view = result.modules[-1]
    fig = figures.lecture_channel_figure(view, image_attack.channel_order(view, "natural"), result.attacked,
                                         height=height, threshold=THRESHOLD, narrow=narrow)
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def step_view(step: int, result: image_attack.LabResult) -> None:
    """One step's images and channel chart, with what the colours and lines mean."""
    image_strip(result)
    channel_chart(result, key=f"lec_ch_{step}")
    caption = (f"Blue: clean image; red: adversarial image. Channels sorted by the clean image's activation. "
               f"Dotted lines: {THRESHOLD:g}% of each image's strongest channel; a channel above its line "
               "counts as switched on.")
    if RUNS[STEPS[step - 1].run][0] == "at-cas":
        caption += " " + figures.MASK_SENTENCE
    st.caption(caption)


def plain_vs_soft(results: dict[str, image_attack.LabResult]) -> None:
    """The last step: plain and soft-mask PGD on the same CAS model, side by side."""
    left, right = st.columns(2)
    for col, run in ((left, "cas_pgd"), (right, "cas_soft")):
        r = results[run]
        model, choice = RUNS[run]
        with col:
            verdict = "fooled" if r.success else "not fooled"
            st.markdown(f"**{choice.describe()}** — `{model}` says **{cas.CLASSES[r.pred_adv]}** "
                        f"({verdict}); its CAS head guesses "
                        f"**{cas.CLASSES[int(r.modules[-1].aux_probs[1].argmax())]}**.")
            st.image(images.upscale(r.x_adv, presentation.image_size(192)), width=presentation.image_size(192),
                     caption="Adversarial image")
            channel_chart(r, key=f"lec_ch_{run}", height=640, narrow=True)
    st.caption("Left: plain PGD leaves the CAS head's guess, and so the mask, unchanged; the mask still "
               "silences the channels. Right: soft-mask PGD flips the head's guess, so another class's row "
               "becomes the mask and lets the attack's channels through. " + figures.MASK_SENTENCE)


def step_links(step: int) -> None:
    """A link to this step (for a slide) and the list of all steps."""
    st.divider()
    mode = {presentation.KEY: "1"} if presentation.is_on() else {}
    base = (getattr(st.context, "url", None) or "").split("?")[0]
    st.markdown("**Link to this step** (for a slide):")
    st.code(base + "?" + urlencode({"step": str(step), **mode}), language=None)
    with st.expander("All steps"):
        for i, other in enumerate(STEPS, start=1):
            link = urlencode({"step": i, **mode})
            st.markdown(f"{i}. [{other.title}](?{link})" + (" — *you are here*" if i == step else ""))


def page() -> None:
    """The Lecture page: one step of the story, its live view, its claim, Back and Next."""
    page_params = [url_state.Param(P + "step", "step", 1, url_state.int_in(1, len(STEPS)))]
    for message in url_state.load_from_url("lecture", page_params):
        st.warning(f"A setting in the link was ignored: {message}.")
    step = st.session_state[P + "step"]
    navigation(step)
    url_state.write_to_url(page_params, extra_names=(presentation.KEY,))
    st.markdown(STEPS[step - 1].text)
    image = lecture_image()
    loaded = bundled_models()
    results = step_results(STEPS[step - 1], loaded, image)
    claim_box(step, results)
    if step == len(STEPS):  # plain vs soft-mask PGD on the same model, side by side
        plain_vs_soft(results)
    else:
        step_view(step, results[STEPS[step - 1].run])
    step_links(step)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
