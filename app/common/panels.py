"""The pages' result panels: the verdict, the images, the probabilities and the channel charts with
their summary figures and plain-language captions."""
from __future__ import annotations

import contextlib
import threading

import streamlit as st

import cas

from . import figures, image_attack, images, presentation
from .defense_text import ELEMENT_WISE_NOTE, label_of, text_of
from .url_state import widget_key


_DRAWING = threading.Lock()


@contextlib.contextmanager
def drawing_turn(timeout: float = 5.0):
    """Draw a page from results it already has, one page run at a time on the whole server. Drawing is
    Python work that holds the interpreter's lock nearly all the time: thirty page runs drawing at once
    (a class whose results just arrived) spend part of it handing the lock back and forth, and in turns
    they finish sooner, the last one included (benchmarks/class_load.py). Nothing slow may run inside:
    compute first. A turn that does not come within ``timeout`` seconds is not waited for."""
    got = _DRAWING.acquire(timeout=timeout)
    try:
        yield
    finally:
        if got:
            _DRAWING.release()


def progress_bar(where=st):
    """The pages' progress display for :mod:`app.common.compute`: ``display(text)`` opens a bar,
    returns ``(update(fraction, text), close())``."""
    def display(text: str):
        bar = where.progress(0.0, text=f"{text}…")
        return (lambda fraction, text: bar.progress(min(1.0, fraction), text=text)), bar.empty
    return display


def _pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def verdict(result: image_attack.LabResult, where=st) -> None:
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


def image_row(result: image_attack.LabResult, where=st, size: int = 192) -> None:
    """Clean image, amplified perturbation and adversarial image, enlarged with crisp pixels,
    with the perturbation's norms. In presentation mode: at least 384 pixels, two images per row."""
    size = presentation.image_size(size)
    if presentation.is_on():
        top, bottom = where.columns(2), where.columns(2)
        cols, width = [top[0], bottom[0], top[1]], size
    else:  # each image fills its column, so three never overlap on a narrow (1024-pixel) screen
        cols, width, size = where.columns(3), "stretch", 2 * size
    cols[0].image(images.enlarged_png(result.x_nat, size), caption="Clean image (32×32, enlarged)", width=width,
                  output_format="PNG")
    pert, factor = images.perturbation_image(result.delta)
    cols[1].image(images.enlarged_png(pert, size), width=width, output_format="PNG",
                  caption=f"Perturbation × {factor:.0f} (grey = no change)" if result.linf255 > 0
                  else "Perturbation: none")
    cols[2].image(images.enlarged_png(result.x_adv, size), caption="Adversarial image (what the model gets)",
                  width=width, output_format="PNG")
    if result.attacked:
        budget = f"budget {result.choice.budget()}"
        cols[1].markdown(f"L∞ = **{result.linf255:.2f}/255** · L2 = **{result.l2:.3f}** ({budget})")


def probability_chart(result: image_attack.LabResult, where=st, key: str | None = None, height: int = 340,
                      aux_heads: bool = True) -> None:
    """Class probabilities of the final head and (``aux_heads``) of every auxiliary head of the mask
    modules (CAS or a relative)."""
    aux = [(m.name, m.aux_probs) for m in result.modules if m.aux_probs is not None and aux_heads]
    fig = figures.probability_figure(result.probs, aux, show_adversarial=result.attacked,
                                     highlight=result.label if result.label_known else None, height=height)
    where.plotly_chart(fig, key=key, config={"displayModeBar": False})
    if aux:
        where.caption(text_of(result.modules[0].defense).heads)


def channel_caption(view: image_attack.PointView, sort: str, threshold: float, attacked: bool) -> str:
    """Plain-language explanation of the channel chart (for a projected lecture)."""
    k = view.before.shape[1]
    label = label_of(view.defense)
    mean = ", spatial mean" if view.element_wise else ""
    order = {"natural": "from the channel the clean image switches on most, to the least",
             "mask": f"from the channel the {label} mask lets through most (largest mask weight{mean}) to "
                     "the least",
             "index": "by channel number"}[sort]
    who = "the clean image (blue) and the adversarial image (red)" if attacked else "the clean image"
    text = (f"Each bar is one of the {k} channels (feature detectors) of block **{view.name}**, averaged "
            f"over the image, for {who}; channels are sorted {order}. ")
    if view.is_cas and view.defense == "cas":
        text += ("Top: what the block produced. Middle: the CAS mask, one weight per channel, taken from the "
                 "row of the class that the module's own head guesses — if the attack changes that guess, "
                 "the mask changes too (red diamonds: the adversarial image's mask). Bottom: what goes on to "
                 "the next layer (top × middle). " + figures.MASK_SENTENCE + " ")
    elif view.is_cas:
        what = ("its spatial mean per channel (the mask itself has one weight per channel and position)"
                if view.element_wise else "one weight per channel")
        text += (f"Top: what the block produced. Middle: the {label} mask, {what}; red diamonds: the "
                 "adversarial image's mask. Bottom: what goes on to the next layer. "
                 + text_of(view.defense).mask + (" " + ELEMENT_WISE_NOTE if view.element_wise else "") + " ")
    else:
        text += "This model has no CAS module (nor a relative): every channel passes on unchanged. "
    text += (f"A channel counts as *switched on* when it exceeds {threshold:g}% of the strongest one "
             "(the dotted lines). "
             "The paper's finding: adversarial images switch on more channels, more strongly; "
             "CAS tries to suppress the extra ones. That is a claim about averages over many images: one "
             "image is one sample and may go against it — the **Channel statistics** page measures it on "
             "hundreds of images, with its noise.")
    return text


def summary_metrics(view: image_attack.PointView, threshold: float, attacked: bool, where=st) -> None:
    """Total activation, channels switched on and uniformity, before (and after) the mask, with the
    change from the clean to the adversarial image."""
    k = view.before.shape[1]
    stages = [("before the mask", view.before)] + ([("after the mask", view.after)] if view.is_cas else [])
    for stage, values in stages:
        nat = image_attack.module_summary(values[0], threshold / 100)
        adv = image_attack.module_summary(values[1], threshold / 100)
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
    where.caption(UNIFORMITY)


UNIFORMITY = ("**Uniformity**: how evenly |activation| is spread over the channels (1 = all equal, 0 = one "
              "channel carries everything).")


def module_line(views: list[image_attack.PointView], shown: image_attack.PointView) -> str:
    """Which module the charts show, in one line."""
    if not shown.is_cas:
        return f"Shown: the last block, **{shown.name}** (this model has no mask module)."
    label = label_of(shown.defense)
    if len(views) == 1:
        return f"Shown: the {label} module at **{shown.name}**, this model's only one."
    place = ("the last of this model's " + str(len(views)) + " (the one the Lecture explains)"
             if shown is views[-1] else f"module {views.index(shown) + 1} of this model's {len(views)}")
    return f"Shown: the {label} module at **{shown.name}**, {place}; choose another above."


def channel_charts(result: image_attack.LabResult, sort: str, threshold: float, where=st, key: str = "module",
                   height: int | None = None, metrics: bool = True) -> None:
    """One mask module's channel chart, its summary figures and its caption, and for an element-wise
    mask its spatial view (:func:`spatial_view`). The last module is shown unless the user picks
    another (a choice kept under session-state ``key``); one line says which is shown."""
    views = result.modules
    names = [v.name for v in views]
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[-1]
    if len(views) > 1:
        label = label_of(views[-1].defense)
        where.radio(f"{label} module shown", names, key=widget_key(key), horizontal=True,
                    format_func=lambda n: f"{n} (last)" if n == names[-1] else n,
                    help=f"This model has {len(views)} {label} modules, each with its own auxiliary head; the "
                         "Lecture explains the last one.")
    view = views[names.index(st.session_state[key])]
    where.markdown(module_line(views, view))
    fig = figures.channel_figure(view, image_attack.channel_order(view, sort), result.attacked, height=height,
                                 threshold=threshold)
    where.plotly_chart(fig, key=f"{key}_{view.name}", config={"displayModeBar": False})
    if metrics:
        summary_metrics(view, threshold, result.attacked, where)
    where.caption(channel_caption(view, sort, threshold, result.attacked))
    if view.element_wise:
        spatial_view(view, result.attacked, f"{key}_{view.name}_channel", where)


def spatial_view(view: image_attack.PointView, attacked: bool, key: str, where=st) -> None:
    """An element-wise mask position by position, for one channel the user picks (by default, kept under
    session-state ``key`` as -1: the channel the attack changed most): 4x4 heatmaps of the clean and
    adversarial feature maps and of their masks."""
    label = label_of(view.defense)
    k = view.before.shape[1]
    default = image_attack.most_changed_channel(view)
    options = [-1, *range(k)]
    if st.session_state.get(key) not in options:
        st.session_state[key] = -1
    where.markdown(f"**The {label} mask position by position**")
    what = "changed most by the attack" if attacked else "strongest on the clean image"
    channel = where.selectbox("Channel", options, key=widget_key(key),
                              format_func=lambda c: f"channel {default} ({what})" if c < 0 else f"channel {c}",
                              help=f"{label}'s mask has one weight per channel and position; the bars above "
                                   "show its spatial mean per channel.")
    channel = default if channel < 0 else int(channel)
    h, w = view.spatial_mask.shape[2:]
    fig = figures.spatial_figure(view.spatial_before[:, channel], view.spatial_mask[:, channel], channel, label,
                                 attacked)
    where.plotly_chart(fig, key=f"{key}_fig", config={"displayModeBar": False})
    where.caption(f"Channel {channel} at block **{view.name}**, its {h}×{w} positions: the feature map the {label} "
                  "module reads (blue, one scale for both images) and the mask it applies "
                  f"({'orange +, purple −' if (view.spatial_mask[:, channel] < 0).any() else 'pale 0 to orange 1'}). "
                  "The bars above are the spatial means of these maps.")
