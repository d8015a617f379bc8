"""Streamlit controls and result panels shared by the pages.

Every function takes a ``prefix`` for its session-state keys (``"lab_"`` on the Attack Lab,
``"cmp_"`` on Compare), so two pages never share a widget. Keys of buttons and file/camera inputs
start with ``"btn_"``/``"up_"`` instead: Streamlit does not let code set their values.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from typing import Callable

import numpy as np
import streamlit as st

import cas
from cas import data as cas_data

from . import figures, images, lab, models
from .url_state import (Param, boolean, dump_bool, dump_number, dump_optional, float_in, int_in, one_of,
                        optional)

CLASS_OPTIONS = ("all",) + tuple(cas.CLASSES)
TARGET_OPTIONS = ("untargeted",) + tuple(cas.CLASSES)
UPLOAD, PATH = "__upload__", "__path__"
GALLERY_SIZE = 12


# -- URL parameters ------------------------------------------------------------------------------------

def image_params(prefix: str, defaults: dict | None = None) -> list[Param]:
    """URL parameters of the image choice: source, class filter, test-set index."""
    d = defaults or {}
    return [
        Param(prefix + "src", "src", d.get("src", "cifar"), one_of(("cifar", "upload", "camera"))),
        Param(prefix + "cls", "cls", d.get("cls", "all"), one_of(CLASS_OPTIONS)),
        Param(prefix + "idx", "img", d.get("idx", 0), int_in(0, 9_999_999)),
    ]


def attack_knobs() -> list:
    """Every setting of the interactive attacks, once each (by its key), in registry order."""
    seen = {}
    for name in lab.LAB_ATTACKS[1:]:
        for k in cas.ATTACKS[name].knobs:
            seen.setdefault(k.key, k)
    return list(seen.values())


def _knob_param(prefix: str, knob, default) -> Param:
    if knob.kind == "float":
        return Param(prefix + knob.key, knob.key, default, float_in(knob.low, knob.high), dump_number)
    if knob.kind == "int":
        return Param(prefix + knob.key, knob.key, default, int_in(int(knob.low), int(knob.high)))
    if knob.kind == "step":
        return Param(prefix + knob.key, knob.key, default, optional(float_in(knob.low, knob.high)), dump_optional())
    if knob.kind == "bool":
        return Param(prefix + knob.key, knob.key, default, boolean, dump_bool)
    return Param(prefix + knob.key, knob.key, default, one_of(TARGET_OPTIONS))


def attack_params(prefix: str, defaults: dict | None = None) -> list[Param]:
    """URL parameters of the attack choice, derived from the attack registry (the names are the same
    on every page). A target is kept as its class name ("untargeted" for none)."""
    d = defaults or {}
    params = [Param(prefix + "attack", "attack", d.get("attack", lab.AttackChoice().attack), one_of(lab.LAB_ATTACKS))]
    for k in attack_knobs():
        default = "untargeted" if k.kind == "class" else k.default
        params.append(_knob_param(prefix, k, d.get(k.key, default)))
    return params


def chart_params(prefix: str) -> list[Param]:
    """URL parameters of the channel charts: sort order and activation threshold (in %)."""
    return [Param(prefix + "sort", "sort", "natural", one_of(lab.SORTS)),
            Param(prefix + "thr", "thr", 1.0, float_in(0.0, 50.0), dump_number)]


def values_of(prefix: str, names) -> dict:
    """The current values of ``prefix + name`` session keys, by name (for another page's defaults)."""
    return {n: st.session_state[prefix + n] for n in names if prefix + n in st.session_state}


# -- models --------------------------------------------------------------------------------------------

def model_picker(prefix: str, available: list[dict], where=st) -> models.LoadedModel | None:
    """Model choice: a listed model, an uploaded checkpoint, or a checkpoint path. Shows the model's
    one-line card, or a clear error for a bad checkpoint. Returns the loaded model or None."""
    names = [m["name"] for m in available]
    options = names + [UPLOAD, PATH]
    key = prefix + "model"
    if st.session_state.get(key) not in options:
        if st.session_state.get(key):
            where.warning(f"The model **{st.session_state[key]}** is not installed here; "
                          "showing another one instead.")
        st.session_state[key] = options[0]
    if not available:
        where.info(models.NO_MODELS_MESSAGE)
    labels = {UPLOAD: "Upload a checkpoint file…", PATH: "Checkpoint file on this machine…"}
    choice = where.selectbox("Model", options, key=key, format_func=lambda o: labels.get(o, o),
                             help="Bundled models and finished training runs, or a CAS Lab checkpoint "
                                  "(.safetensors with a model card).")
    try:
        if choice == UPLOAD:
            up = where.file_uploader("Checkpoint (.safetensors)", type=["safetensors"],
                                     key="up_" + prefix + "ckpt")
            if up is None:
                where.caption("Upload a `.safetensors` checkpoint saved by CAS Lab.")
                return None
            loaded = models.load_from_upload(up.name, up.getvalue())
        elif choice == PATH:
            path = where.text_input("Checkpoint path", key=prefix + "ckpt",
                                    placeholder="runs/my-run/best.safetensors")
            if not path.strip():
                where.caption("Type the path of a `.safetensors` checkpoint saved by CAS Lab.")
                return None
            loaded = models.load_from_path(path.strip(), name=None, label=path.strip())
        else:
            entry = available[names.index(choice)]
            loaded = models.load_from_path(entry["path"], name=choice, label=choice)
    except cas.CheckpointError as e:
        where.error(f"This checkpoint cannot be used: {e}")
        return None
    desc = next((m["description"] for m in available if m["name"] == choice), "")
    where.caption(models.card_line(loaded.card, desc))
    return loaded


# -- images --------------------------------------------------------------------------------------------

class ImageChoice:
    """The chosen image: ``x`` uint8 (3, 32, 32), its real class ``label`` (None if unknown), a
    ``title`` for captions and a ``slug`` for file names."""

    def __init__(self, x: np.ndarray, label: int | None, title: str, slug: str):
        self.x, self.label, self.title, self.slug = x, label, title, slug


def _cifar_or_none(where) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return images.cifar_test()
    except cas_data.DataNotFoundError as e:
        where.warning(f"**No CIFAR-10 copy was found**, so the test-set gallery is unavailable. {e}\n\n"
                      "You can still upload an image or use the camera.")
        if where.button("Download CIFAR-10 now (needs internet, ~170 MB)", key="btn_download_cifar"):
            with st.spinner("Downloading CIFAR-10…"):
                try:
                    images.download_cifar()
                except Exception as err:  # network errors come in many types
                    where.error(f"The download failed: {err}")
                else:
                    st.rerun()
        return None


def _set_index(key: str, value: int) -> None:
    st.session_state[key] = int(value)


def _random_index(key: str, pool: np.ndarray) -> None:
    st.session_state[key] = int(random.choice(pool.tolist()))


def image_picker(prefix: str, where=st) -> ImageChoice | None:
    """Image choice: a CIFAR-10 test image (class filter, gallery, random pick, index), an uploaded
    photo (centre-cropped to 32x32, the crop is shown) or the camera. Returns None until an image is
    available; problems are explained on the page."""
    cifar = _cifar_or_none(where)
    sources = (["cifar"] if cifar is not None else []) + ["upload", "camera"]
    src_key = prefix + "src"
    if st.session_state.get(src_key) not in sources:
        st.session_state[src_key] = sources[0]
    names = {"cifar": "CIFAR-10 test image", "upload": "Upload a photo", "camera": "Camera"}
    left, right = where.columns([1, 4])
    src = left.radio("Image source", sources, key=src_key, format_func=names.get)
    with right:
        if src == "cifar":
            return _cifar_picker(prefix, cifar, st)
        return _photo_picker(prefix, src, st)


def _cifar_picker(prefix: str, cifar, where) -> ImageChoice:
    x_all, y_all = cifar
    n = len(y_all)
    idx_key, cls_key = prefix + "idx", prefix + "cls"
    if not 0 <= st.session_state.get(idx_key, 0) < n:
        where.warning(f"Image number {st.session_state[idx_key]} does not exist (the test set has {n}); "
                      "showing image 0.")
        st.session_state[idx_key] = 0
    c1, c2, c3 = where.columns([2, 2, 1], vertical_alignment="bottom")
    cls = c1.selectbox("Class filter", CLASS_OPTIONS, key=cls_key,
                       format_func=lambda c: "all classes" if c == "all" else c)
    pool = np.arange(n) if cls == "all" else np.flatnonzero(y_all == cas.CLASSES.index(cls))
    c2.number_input(f"Test image number (0–{n - 1})", min_value=0, max_value=n - 1, step=1, key=idx_key)
    c3.button("Random", icon=":material/casino:", key="btn_" + prefix + "random", on_click=_random_index,
              args=(idx_key, pool), help="Pick a random test image (of the filtered class)")
    idx = int(st.session_state[idx_key])
    with where.expander(f"Browse the test images ({'all classes' if cls == 'all' else cls})"):
        page_key = prefix + "gallery_page"
        pages = max(1, -(-len(pool) // GALLERY_SIZE))
        if not 1 <= st.session_state.get(page_key, 1) <= pages:
            st.session_state[page_key] = 1
        page = st.number_input("Gallery page", 1, pages, key=page_key, step=1) - 1
        shown = pool[page * GALLERY_SIZE:(page + 1) * GALLERY_SIZE]
        cols = st.columns(GALLERY_SIZE // 2)
        for i, j in enumerate(shown):
            col = cols[i % len(cols)]
            col.image(images.upscale(x_all[j], 64), caption=f"#{j} {cas.CLASSES[y_all[j]]}")
            col.button("Use", key=f"btn_{prefix}use_{j}", on_click=_set_index, args=(idx_key, j),
                       type="primary" if j == idx else "secondary")
    label = int(y_all[idx])
    return ImageChoice(x_all[idx], label, f"CIFAR-10 test image #{idx} ({cas.CLASSES[label]})", f"cifar{idx}")


def _photo_picker(prefix: str, src: str, where) -> ImageChoice | None:
    if src == "upload":
        f = where.file_uploader("Photo (any size; the centre square is used)",
                                type=["png", "jpg", "jpeg", "webp", "bmp", "gif"],
                                key="up_" + prefix + "image")
    else:
        f = where.camera_input("Take a photo", key="up_" + prefix + "camera")
    if f is None:
        where.caption("The photo is centre-cropped to a square and shrunk to 32×32 pixels, "
                      "the size of CIFAR-10 images.")
        return None
    try:
        prepared = images.prepare_upload(f.getvalue(), f.name)
    except images.ImageInputError as e:
        where.error(str(e))
        return None
    c1, c2, c3 = where.columns([1, 1, 2])
    w, h = prepared.original_size
    c1.image(prepared.crop, caption=f"Centre crop of the {w}×{h} photo", width=160)
    c2.image(images.upscale(prepared.x, 160), caption="What the model sees (32×32)", width=160)
    options = (-1,) + tuple(range(len(cas.CLASSES)))
    lab_key = prefix + "label"
    label = c3.selectbox("What is in the photo?", options, key=lab_key,
                         format_func=lambda i: cas.CLASSES[i] if i >= 0 else
                         "I don't know (attack the model's own guess)",
                         help="CIFAR-10 knows only these 10 classes. Without a class, the attack tries to "
                              "move the model away from whatever it predicts on the clean photo.")
    name = "camera photo" if src == "camera" else f"uploaded photo {f.name}"
    return ImageChoice(prepared.x, None if label < 0 else int(label), name, "photo")


# -- attack settings -----------------------------------------------------------------------------------

def attack_controls(prefix: str, model, where=st) -> lab.AttackChoice | None:
    """Attack menu and the chosen attack's settings (its knobs in the registry). Returns the choice, or
    None with a clear message when the settings are invalid."""
    options = lab.attacks_for(model)
    key = prefix + "attack"
    if st.session_state.get(key) not in options:
        wanted = st.session_state[key]
        fallback = cas.ATTACKS[wanted].for_model(model).name
        where.info(f"**{lab.attack_label(wanted)}** needs a model with CAS; switched to "
                   f"{lab.attack_label(fallback)}.")
        st.session_state[key] = fallback
    attack = where.selectbox("Attack", options, key=key, format_func=lab.attack_label,
                             help="\n".join(f"- **{lab.attack_label(a)}**: {cas.ATTACKS[a].description}"
                                            for a in options if a != lab.NONE))
    if getattr(model, "has_cas", False):
        where.caption(":material/warning: **Honest evaluation.** This model picks its CAS mask with an "
                      "*argmax* over its own guess. Plain FGSM/PGD/CW gradients cannot see that choice, so "
                      "they can fail even when the model is not robust (*gradient masking*). **Soft-mask "
                      "PGD** replaces the argmax by a smooth mix for the gradient: it is the honest test.")
    if attack == lab.NONE:
        return lab.AttackChoice(lab.NONE)
    values = {}
    for k in cas.ATTACKS[attack].knobs:
        wkey = prefix + k.key
        if k.kind == "bool":
            values[k.key] = bool(where.checkbox(k.label, key=wkey, help=k.help or None))
        elif k.kind == "class":
            t = where.selectbox(k.label, TARGET_OPTIONS, key=wkey,
                                format_func=lambda t: "untargeted (any wrong class)" if t == "untargeted"
                                else f"make it say “{t}”")
            values[k.key] = None if t == "untargeted" else cas.CLASSES.index(t)
        elif k.kind == "step":
            v = where.number_input(k.label, k.low, k.high, step=k.increment, key=wkey, placeholder=k.help)
            values[k.key] = None if v is None else float(v)
        elif k.kind == "int":
            values[k.key] = int(where.number_input(k.label, int(k.low), int(k.high), step=int(k.increment),
                                                   key=wkey, help=k.help or None))
        else:
            values[k.key] = float(where.number_input(k.label, k.low, k.high, step=k.increment, key=wkey,
                                                     help=k.help or None))
    choice = lab.AttackChoice(attack, **values)
    try:
        choice.validate()
    except ValueError as e:
        where.error(f"These attack settings cannot run: {e}")
        return None
    return choice


# -- running, with results kept per session ----------------------------------------------------------

RESULTS_KEPT = 24


def cached(key: tuple, compute: Callable[[], object]):
    """Return the result stored under ``key`` for this session, computing it on first use. Chart
    options therefore never re-run an attack. ``st.session_state["_lab_computations"]`` counts the
    computations (shown to nobody; tests read it)."""
    store = st.session_state.setdefault("_lab_results", OrderedDict())
    if key in store:
        store.move_to_end(key)
        return store[key]
    value = compute()
    st.session_state["_lab_computations"] = st.session_state.get("_lab_computations", 0) + 1
    store[key] = value
    while len(store) > RESULTS_KEPT:
        store.popitem(last=False)
    return value


def progress_reporter(label: str, where=st) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress bar and (callback(done, total), clear()) for an attack."""
    bar = where.progress(0.0, text=f"{label}…")

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: step {done} of {total}")

    return update, bar.empty


def run_analysis(model_key: str, model, image: ImageChoice, choice: lab.AttackChoice, where=st,
                 x_adv: np.ndarray | None = None, extra_key: tuple = ()) -> lab.LabResult:
    """:func:`app.common.lab.analyse` with a progress bar, cached per (model, image, settings)."""
    key = (model_key, images.digest(image.x), image.label, choice.key(), extra_key)

    def compute():
        update, clear = progress_reporter(f"{lab.attack_label(choice.attack)} on {image.title}", where)
        try:
            return lab.analyse(model, image.x, choice, image.label, progress=update, x_adv=x_adv)
        finally:
            clear()

    return cached(key, compute)


# -- result panels -------------------------------------------------------------------------------------

def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def verdict(result: lab.LabResult, where=st) -> None:
    """The outcome in one sentence: predictions and whether the attack succeeded."""
    p, c = result.probs, cas.CLASSES
    truth = (f"The image shows **{c[result.label]}**." if result.label_known
             else "Real class unknown: the attack works against the clean prediction, "
                  f"**{c[result.label]}**.")
    clean = f"On the clean image the model says **{c[result.pred_nat]}** ({_pct(p[0, result.pred_nat])})"
    if result.label_known:
        clean += " (correct)." if result.pred_nat == result.label else " (wrong already)."
    else:
        clean += "."
    if not result.attacked:
        where.info(f"{truth} {clean}")
        return
    adv = f"on the adversarial image: **{c[result.pred_adv]}** ({_pct(p[1, result.pred_adv])})."
    if result.label_known and result.pred_nat != result.label and result.choice.get("target") is None:
        where.warning(f"**Nothing to attack**: the model already gets the clean image wrong. {truth} {clean} "
                      f"{adv.capitalize()} Pick another image (Random) to see an attack at work.",
                      icon=":material/help:")
        return
    if result.success:
        target = result.choice.get("target")
        goal = f" — the target “{c[target]}” was reached" if target is not None else ""
        where.error(f"**The attack succeeded**{goal}. {truth} {clean} {adv.capitalize()}",
                    icon=":material/bolt:")
    else:
        goal = f"could not make it say “{c[result.choice.get('target')]}”" if result.choice.get("target") is not None else \
            "did not change the answer"
        where.success(f"**The attack failed**: it {goal}. {truth} {clean} {adv.capitalize()}",
                      icon=":material/shield:")


def image_row(result: lab.LabResult, where=st, size: int = 192) -> None:
    """Clean image, amplified perturbation and adversarial image, enlarged with crisp pixels,
    with the perturbation's norms."""
    cols = where.columns(3)
    cols[0].image(images.upscale(result.x_nat, size), caption="Clean image (32×32, enlarged)", width=size)
    pert, factor = images.perturbation_image(result.delta)
    cols[1].image(images.upscale(pert, size), width=size,
                  caption=f"Perturbation × {factor:.0f} (grey = no change)" if result.linf255 > 0
                  else "Perturbation: none")
    cols[2].image(images.upscale(result.x_adv, size), caption="Adversarial image (what the model gets)",
                  width=size)
    if result.attacked:
        budget = f"budget {result.choice.budget()}"
        cols[1].markdown(f"L∞ = **{result.linf255:.2f}/255** · L2 = **{result.l2:.3f}** ({budget})")


def probability_chart(result: lab.LabResult, where=st, key: str | None = None, height: int = 340,
                      aux_heads: bool = True) -> None:
    """Class probabilities of the final head and (``aux_heads``) of every auxiliary CAS head."""
    aux = [(m.name, m.aux_probs) for m in result.modules if m.aux_probs is not None and aux_heads]
    fig = figures.probability_figure(result.probs, aux, show_adversarial=result.attacked,
                                     highlight=result.label if result.label_known else None, height=height)
    where.plotly_chart(fig, key=key, config={"displayModeBar": False})
    if aux:
        where.caption("The auxiliary heads are the small classifiers inside the CAS modules. Their guess "
                      "picks the mask, so an attack that fools them also changes which channels pass.")


def channel_caption(view: lab.ModuleView, sort: str, threshold: float, attacked: bool) -> str:
    """Plain-language explanation of the channel chart (for a projected lecture)."""
    k = view.before.shape[1]
    order = {"natural": "from the channel the clean image switches on most, to the least",
             "mask": "from the channel CAS lets through most (largest mask weight) to the least",
             "index": "by channel number"}[sort]
    who = "the clean image (blue) and the adversarial image (red)" if attacked else "the clean image"
    text = (f"Each bar is one of the {k} channels (feature detectors) of block **{view.name}**, averaged "
            f"over the image, for {who}; channels are sorted {order}. ")
    if view.is_cas:
        text += ("Top: what the block produced. Middle: the CAS mask, one weight per channel, taken from the "
                 "row of the class that the module's own head guesses — if the attack changes that guess, "
                 "the mask changes too. Bottom: what goes on to the next layer (top × middle). ")
    else:
        text += "This model has no CAS module: every channel passes on unchanged. "
    text += (f"A channel counts as *switched on* when it exceeds {threshold:g}% of the strongest one. "
             "The paper's finding: adversarial images switch on more channels, more strongly; "
             "CAS tries to suppress the extra ones.")
    return text


def summary_metrics(view: lab.ModuleView, threshold: float, attacked: bool, where=st) -> None:
    """Total activation, channels switched on and uniformity, before (and after) the mask, with the
    change from the clean to the adversarial image."""
    k = view.before.shape[1]
    stages = [("before the mask", view.before)] + ([("after the mask", view.after)] if view.is_cas else [])
    for stage, values in stages:
        nat = lab.module_summary(values[0], threshold / 100)
        adv = lab.module_summary(values[1], threshold / 100)
        cols = where.columns(3)
        show = adv if attacked else nat
        def delta(key, fmt, show=show, nat=nat):
            return fmt(show[key] - nat[key]) + " vs clean" if attacked else None

        cols[0].metric(f"Total activation, {stage}", f"{show['total']:.2f}",
                       delta(key="total", fmt=lambda v: f"{v:+.2f}"), delta_color="off",
                       help="Sum of |activation| over all channels.")
        cols[1].metric(f"Channels switched on, {stage}", f"{show['active']} of {k}",
                       delta(key="active", fmt=lambda v: f"{v:+d}"), delta_color="off",
                       help=f"Channels above {threshold:g}% of the strongest channel.")
        cols[2].metric(f"Uniformity, {stage}", f"{show['uniformity']:.3f}",
                       delta(key="uniformity", fmt=lambda v: f"{v:+.3f}"), delta_color="off",
                       help="How evenly the activation is spread over the channels: 1 = all channels "
                            "equally, 0 = a single channel.")


def chart_options(prefix: str, where=st) -> tuple[str, float]:
    """Sort order and threshold controls of the channel charts."""
    c1, c2 = where.columns([3, 2])
    sort = c1.radio("Sort channels by", lab.SORTS, key=prefix + "sort", horizontal=True,
                    format_func=lab.SORT_LABELS.get)
    thr = c2.slider("“Switched on” above (% of the strongest channel)", 0.0, 50.0, step=0.5,
                    key=prefix + "thr")
    return sort, float(thr)


def channel_charts(result: lab.LabResult, sort: str, threshold: float, where=st, key: str = "ch",
                   height: int | None = None, metrics: bool = True) -> None:
    """One tab per CAS module: the channel chart, its summary figures and its caption."""
    views = result.modules
    tabs = where.tabs([f"{'CAS module' if v.is_cas else 'Last block'} {v.name}" for v in views])
    for tab, view in zip(tabs, views):
        with tab:
            fig = figures.channel_figure(view, lab.channel_order(view, sort), result.attacked, height=height)
            st.plotly_chart(fig, key=f"{key}_{view.name}", config={"displayModeBar": False})
            if metrics:
                summary_metrics(view, threshold, result.attacked)
            st.caption(channel_caption(view, sort, threshold, result.attacked))
