"""The pages' controls: model, image and attack pickers, the channel charts' options, and the URL
parameters behind them.

Every function takes a page's ``prefix`` (:mod:`app.common.pages`: ``"lab_"`` on the Attack Lab,
``"cmp_"`` on Compare), so two pages never share a widget. Every session-state key is made by one of
three functions, one convention: ``kind + prefix + name``, the kind empty for widgets whose value lives
in session state (:func:`value_key`: kept across pages, in the URL), ``"btn_"`` for buttons
(:func:`button_key`) and ``"up_"`` for file and camera inputs (:func:`upload_key`) — Streamlit does not
let code set those two, so their keys must not start with a page prefix. A widget every page shares
takes the empty prefix.

The widgets' words for attack settings come from :mod:`app.common.attack_text`.
"""
from __future__ import annotations

import random

import numpy as np
import streamlit as st

import cas
from cas.family import DEFENSES
from cas import data as cas_data

from . import image_attack, images, models
from .attack_text import attack_help, text_of
from .defense_text import FAMILY
from .defense_text import text_of as defense_words
from .url_state import (Param, boolean, dump_bool, dump_number, dump_optional, float_in, int_in, one_of,
                        optional, widget_key)

CLASS_OPTIONS = ("all",) + tuple(cas.CLASSES)
TARGET_OPTIONS = ("untargeted",) + tuple(cas.CLASSES)
UPLOAD, PATH = "__upload__", "__path__"
GALLERY_SIZE = 12
THRESHOLD = 10.0  # default "switched on" line, % of the strongest channel (the Lecture's)


# -- session-state keys --------------------------------------------------------------------------------

def value_key(prefix: str, name: str) -> str:
    """The key of a widget whose value session state holds (and code may set), e.g. ``"lab_model"``."""
    return f"{prefix}{name}"


def button_key(prefix: str, name: str) -> str:
    """The key of a button (or download button), e.g. ``"btn_lab_random"``."""
    return f"btn_{prefix}{name}"


def upload_key(prefix: str, name: str) -> str:
    """The key of a file or camera input, e.g. ``"up_lab_image"``."""
    return f"up_{prefix}{name}"


# -- URL parameters ------------------------------------------------------------------------------------

def image_params(prefix: str, defaults: dict | None = None) -> list[Param]:
    """URL parameters of the image choice: source, class filter, test-set index."""
    d = defaults or {}
    return [
        Param(value_key(prefix, "src"), "src", d.get("src", "cifar"), one_of(("cifar", "upload", "camera"))),
        Param(value_key(prefix, "cls"), "cls", d.get("cls", "all"), one_of(CLASS_OPTIONS)),
        Param(value_key(prefix, "idx"), "img", d.get("idx", 0), int_in(0, 9_999_999)),
    ]


def attack_knobs() -> list:
    """Every setting of the interactive attacks, once each (by its key), in registry order."""
    seen = {}
    for name in image_attack.LAB_ATTACKS[1:]:
        for k in cas.ATTACKS[name].knobs:
            seen.setdefault(k.key, k)
    return list(seen.values())


def _knob_param(prefix: str, knob, default) -> Param:
    if knob.kind == "float":
        return Param(value_key(prefix, knob.key), knob.key, default, float_in(knob.low, knob.high), dump_number)
    if knob.kind == "int":
        return Param(value_key(prefix, knob.key), knob.key, default, int_in(int(knob.low), int(knob.high)))
    if knob.kind == "step":
        return Param(value_key(prefix, knob.key), knob.key, default, optional(float_in(knob.low, knob.high)), dump_optional())
    if knob.kind == "bool":
        return Param(value_key(prefix, knob.key), knob.key, default, boolean, dump_bool)
    return Param(value_key(prefix, knob.key), knob.key, default, one_of(TARGET_OPTIONS))


def attack_params(prefix: str, defaults: dict | None = None) -> list[Param]:
    """URL parameters of the attack choice, derived from the attack registry (the names are the same
    on every page). A target is kept as its class name ("untargeted" for none)."""
    d = defaults or {}
    params = [Param(value_key(prefix, "attack"), "attack", d.get("attack", image_attack.AttackChoice().attack), one_of(image_attack.LAB_ATTACKS))]
    for k in attack_knobs():
        default = "untargeted" if k.kind == "class" else k.default
        params.append(_knob_param(prefix, k, d.get(k.key, default)))
    return params


def chart_params(prefix: str) -> list[Param]:
    """URL parameters of the channel charts: sort order and activation threshold (in %)."""
    return [Param(value_key(prefix, "sort"), "sort", "natural", one_of(image_attack.SORTS)),
            Param(value_key(prefix, "thr"), "thr", THRESHOLD, float_in(0.0, 50.0), dump_number)]


def model_list(names: list[str], most: int | None = None):
    """URL parser of a comma-separated list of installed models (at least 1 and at most ``most``)."""
    def parse(text: str) -> list[str]:
        chosen = [t for t in text.split(",") if t]
        unknown = [t for t in chosen if t not in names]
        if unknown:
            raise ValueError(f"names models that are not installed here ({', '.join(unknown)})")
        if most is not None and not 1 <= len(chosen) <= most:
            raise ValueError(f"must name 1 to {most} models")
        return chosen
    return parse


def values_of(prefix: str, names) -> dict:
    """The current values of ``prefix + name`` session keys, by name (for another page's defaults)."""
    return {n: st.session_state[value_key(prefix, n)] for n in names if value_key(prefix, n) in st.session_state}


# -- models --------------------------------------------------------------------------------------------

def model_picker(prefix: str, available: list[dict], where=st) -> models.LoadedModel | None:
    """Model choice: a listed model, an uploaded checkpoint, or a checkpoint path. Shows the model's
    one-line card, or a clear error for a bad checkpoint. Returns the loaded model or None."""
    names = [m["name"] for m in available]
    paths = models.server_paths_allowed()
    options = names + [UPLOAD] + ([PATH] if paths else [])
    key = value_key(prefix, "model")
    if st.session_state.get(key) not in options:
        if st.session_state.get(key) == PATH:
            where.info("Loading a checkpoint by its path on the server is turned off, because this app is "
                       f"open to the network; upload the file instead (or set {models.ALLOW_PATHS_VARIABLE}=1 "
                       "when starting the app).")
        elif st.session_state.get(key):
            where.warning(f"The model **{st.session_state[key]}** is not installed here; "
                          "showing another one instead.")
        st.session_state[key] = options[0]
    if not available:
        where.info(models.NO_MODELS_MESSAGE)
    labels = {UPLOAD: "Upload a checkpoint file…", PATH: "Checkpoint file on this machine…"}
    choice = where.selectbox("Model", options, key=widget_key(key), format_func=lambda o: labels.get(o, o),
                             help="Bundled models and finished training runs, or a CAS Lab checkpoint "
                                  "(.safetensors with a model card).")
    try:
        if choice == UPLOAD:
            up = where.file_uploader("Checkpoint (.safetensors, or .pt/.pth of the CAS authors' code)",
                                     type=["safetensors", "pt", "pth"], key=upload_key(prefix, "ckpt"))
            if up is None:
                where.caption("Upload a `.safetensors` checkpoint saved by CAS Lab, or a state dict saved by "
                              "the CAS authors' training code (`.pt`/`.pth`; it is converted, never unpickled).")
                return None
            if up.name.lower().endswith((".pt", ".pth")):
                from cas.convert import ARCHS

                arch = where.selectbox("Architecture of this file", ARCHS, key=value_key(prefix, "ckpt_arch"),
                                       help="The model the authors' code trained (their layouts of ResNet-18, "
                                            "VGG-16 and WRN-34-10).")
                with_cas = where.checkbox("It has mask modules", True, key=value_key(prefix, "ckpt_cas"),
                                          help="Untick for the same backbone trained without CAS or a relative.")
                defense = where.selectbox("Whose code saved it", list(DEFENSES), key=value_key(prefix, "ckpt_def"),
                                          format_func=lambda d: f"{DEFENSES[d].label} authors' code",
                                          disabled=not with_cas or arch != "resnet18",
                                          help="CAS's relatives (CIFS, EWAS, FSR) are read in ResNet-18 only.")
                defense = defense if with_cas and arch == "resnet18" else "cas"
                loaded = models.load_from_authors_upload(up.name, up.getvalue(), arch, with_cas, defense)
            else:
                loaded = models.load_from_upload(up.name, up.getvalue())
        elif choice == PATH and paths:
            path = where.text_input("Checkpoint path", key=widget_key(value_key(prefix, "ckpt")),
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
        if where.button("Download CIFAR-10 now (needs internet, ~170 MB)", key=button_key("", "download_cifar")):
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
    src_key = value_key(prefix, "src")
    if st.session_state.get(src_key) not in sources:
        st.session_state[src_key] = sources[0]
    names = {"cifar": "CIFAR-10 test image", "upload": "Upload a photo", "camera": "Camera"}
    left, right = where.columns([1, 4])
    src = left.radio("Image source", sources, key=widget_key(src_key), format_func=names.get)
    with right:
        if src == "cifar":
            return _cifar_picker(prefix, cifar, st)
        return _photo_picker(prefix, src, st)


def _cifar_picker(prefix: str, cifar, where) -> ImageChoice:
    x_all, y_all = cifar
    n = len(y_all)
    idx_key, cls_key = value_key(prefix, "idx"), value_key(prefix, "cls")
    if not 0 <= st.session_state.get(idx_key, 0) < n:
        where.warning(f"Image number {st.session_state[idx_key]} does not exist (the test set has {n}); "
                      "showing image 0.")
        st.session_state[idx_key] = 0
    c1, c2, c3 = where.columns([4, 4, 3], vertical_alignment="bottom")
    cls = c1.selectbox("Class filter", CLASS_OPTIONS, key=widget_key(cls_key),
                       format_func=lambda c: "all classes" if c == "all" else c)
    pool = np.arange(n) if cls == "all" else np.flatnonzero(y_all == cas.CLASSES.index(cls))
    c2.number_input(f"Test image number (0–{n - 1})", min_value=0, max_value=n - 1, step=1,
                    key=widget_key(idx_key))
    c3.button("Random", icon=":material/casino:", key=button_key(prefix, "random"), on_click=_random_index,
              args=(idx_key, pool), help="Pick a random test image (of the filtered class)", width="stretch")
    idx = int(st.session_state[idx_key])
    gallery = where.expander(f"Browse the test images ({'all classes' if cls == 'all' else cls})",
                             key=value_key(prefix, "gallery_open"), on_change="rerun")
    if gallery.open:  # drawn only when open: twelve images and buttons a visit would otherwise pay for
        with gallery:
            _gallery(prefix, x_all, y_all, pool, idx, idx_key)
    label = int(y_all[idx])
    return ImageChoice(x_all[idx], label, f"CIFAR-10 test image #{idx} ({cas.CLASSES[label]})", f"cifar{idx}")


def _gallery(prefix: str, x_all: np.ndarray, y_all: np.ndarray, pool: np.ndarray, idx: int, idx_key: str) -> None:
    """One page of thumbnails of ``pool`` (test-set indices), each with a button that picks it."""
    page_key = value_key(prefix, "gallery_page")
    pages = max(1, -(-len(pool) // GALLERY_SIZE))
    if not 1 <= st.session_state.get(page_key, 1) <= pages:
        st.session_state[page_key] = 1
    page = st.number_input("Gallery page", 1, pages, key=widget_key(page_key), step=1) - 1
    shown = pool[page * GALLERY_SIZE:(page + 1) * GALLERY_SIZE]
    cols = st.columns(GALLERY_SIZE // 2)
    for i, j in enumerate(shown):
        col = cols[i % len(cols)]
        col.image(images.enlarged_png(x_all[j], 64), caption=f"#{j} {cas.CLASSES[y_all[j]]}", output_format="PNG")
        col.button("Use", key=button_key(prefix, f"use_{j}"), on_click=_set_index, args=(idx_key, j),
                   type="primary" if j == idx else "secondary")


def _photo_picker(prefix: str, src: str, where) -> ImageChoice | None:
    if src == "upload":
        f = where.file_uploader("Photo (any size; the centre square is used)",
                                type=["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"],
                                key=upload_key(prefix, "image"))
    else:
        f = where.camera_input("Take a photo", key=upload_key(prefix, "camera"))
    if f is None:
        where.caption("The photo is centre-cropped to a square and shrunk to 32×32 pixels, "
                      "the size of CIFAR-10 images.")
        return None
    try:
        prepared = images.prepare_upload(f.getvalue(), f.name)
    except images.ImageInputError as e:
        where.error(str(e))
        return None
    if prepared.note:
        where.caption(prepared.note)
    c1, c2, c3 = where.columns([1, 1, 2])
    w, h = prepared.original_size
    c1.image(prepared.crop, caption=f"Centre crop of the {w}×{h} photo", width=160)
    c2.image(images.enlarged_png(prepared.x, 160), caption="What the model sees (32×32)", width=160,
             output_format="PNG")
    options = (-1,) + tuple(range(len(cas.CLASSES)))
    lab_key = value_key(prefix, "label")
    label = c3.selectbox("What is in the photo?", options, key=widget_key(lab_key),
                         format_func=lambda i: cas.CLASSES[i] if i >= 0 else
                         "I don't know (attack the model's own guess)",
                         help="CIFAR-10 knows only these 10 classes. Without a class, the attack tries to "
                              "move the model away from whatever it predicts on the clean photo.")
    name = "camera photo" if src == "camera" else f"uploaded photo {f.name}"
    return ImageChoice(prepared.x, None if label < 0 else int(label), name, "photo")


# -- attack settings -----------------------------------------------------------------------------------

def attack_controls(prefix: str, model, where=st) -> image_attack.AttackChoice | None:
    """Attack menu and the chosen attack's settings (its knobs in the registry). Returns the choice, or
    None with a clear message when the settings are invalid."""
    options = image_attack.attacks_for(model)
    key = value_key(prefix, "attack")
    if st.session_state.get(key) not in options:
        wanted = st.session_state[key]
        fallback = cas.ATTACKS[wanted].for_model(model).name
        where.info(f"**{image_attack.attack_label(wanted)}** needs a model with CAS or a relative "
                   f"(CIFS, EWAS, FSR); switched to {image_attack.attack_label(fallback)}.")
        st.session_state[key] = fallback
    attack = where.selectbox("Attack", options, key=widget_key(key), format_func=image_attack.attack_label,
                             help="\n".join(f"- **{image_attack.attack_label(a)}**: {attack_help(a)}"
                                            for a in options if a != image_attack.NONE))
    if getattr(model, "has_cas", False):
        defense = getattr(model, "defense", None)
        who = (f"This model {defense_words(defense).rule}." if defense else
               f"These models' masks ({FAMILY}) are picked by an *argmax* or a near-step.")
        where.caption(f":material/warning: **Honest evaluation.** {who} Plain FGSM/PGD/CW gradients cannot see "
                      "how the mask would change, so they can fail even when the model is not robust "
                      "(*gradient masking*). **Soft-mask PGD** replaces the mask by a smooth version for the "
                      "gradient: it is the honest test.")
    if attack == image_attack.NONE:
        return image_attack.AttackChoice(image_attack.NONE)
    values = {}
    for k in cas.ATTACKS[attack].knobs:
        wkey = widget_key(value_key(prefix, k.key))
        text = text_of(attack, k.key)
        if k.kind == "bool":
            values[k.key] = bool(where.checkbox(text.label, key=wkey, help=text.help or None))
        elif k.kind == "class":
            t = where.selectbox(text.label, TARGET_OPTIONS, key=wkey,
                                format_func=lambda t: "untargeted (any wrong class)" if t == "untargeted"
                                else f"make it say “{t}”")
            values[k.key] = None if t == "untargeted" else cas.CLASSES.index(t)
        elif k.kind == "step":
            v = where.number_input(text.label, k.low, k.high, step=text.increment, key=wkey, placeholder=text.help)
            values[k.key] = None if v is None else float(v)
        elif k.kind == "int":
            values[k.key] = int(where.number_input(text.label, int(k.low), int(k.high), step=int(text.increment),
                                                   key=wkey, help=text.help or None))
        else:
            values[k.key] = float(where.number_input(text.label, k.low, k.high, step=text.increment, key=wkey,
                                                     help=text.help or None))
    choice = image_attack.AttackChoice(attack, **values)
    try:
        choice.validate()
    except ValueError as e:
        where.error(f"These attack settings cannot run: {e}")
        return None
    return choice


def chart_options(prefix: str, where=st) -> tuple[str, float]:
    """Sort order and threshold controls of the channel charts."""
    c1, c2 = where.columns([3, 2])
    sort = c1.radio("Sort channels by", image_attack.SORTS, key=widget_key(value_key(prefix, "sort")), horizontal=True,
                    format_func=image_attack.SORT_LABELS.get)
    thr = c2.slider("“Switched on” above (% of the strongest channel)", 0.0, 50.0, step=0.5,
                    key=widget_key(value_key(prefix, "thr")))
    return sort, float(thr)
