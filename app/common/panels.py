"""The pages' result panels: the verdict, the images, the probabilities and the channel charts with
their summary figures and plain-language captions."""
from __future__ import annotations

import streamlit as st

import cas

from . import figures, image_attack, images, presentation


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
    """Class probabilities of the final head and (``aux_heads``) of every auxiliary CAS head."""
    aux = [(m.name, m.aux_probs) for m in result.modules if m.aux_probs is not None and aux_heads]
    fig = figures.probability_figure(result.probs, aux, show_adversarial=result.attacked,
                                     highlight=result.label if result.label_known else None, height=height)
    where.plotly_chart(fig, key=key, config={"displayModeBar": False})
    if aux:
        where.caption("The auxiliary heads are the small classifiers inside the CAS modules. Their guess "
                      "picks the mask, so an attack that fools them also changes which channels pass.")


def channel_caption(view: image_attack.PointView, sort: str, threshold: float, attacked: bool) -> str:
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
                 "the mask changes too (red diamonds: the adversarial image's mask). Bottom: what goes on to "
                 "the next layer (top × middle). " + figures.MASK_SENTENCE + " ")
    else:
        text += "This model has no CAS module: every channel passes on unchanged. "
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


def channel_charts(result: image_attack.LabResult, sort: str, threshold: float, where=st, key: str = "ch",
                   height: int | None = None, metrics: bool = True, last_first: bool = False) -> None:
    """One tab per CAS module: the channel chart, its summary figures and its caption; ``last_first``:
    the last module's tab open first (the one the Lecture shows)."""
    views = result.modules
    names = [f"{'CAS module' if v.is_cas else 'Last block'} {v.name}" for v in views]
    tabs = where.tabs(names, default=names[-1] if last_first else None)
    for tab, view in zip(tabs, views):
        with tab:
            fig = figures.channel_figure(view, image_attack.channel_order(view, sort), result.attacked, height=height,
                                         threshold=threshold)
            st.plotly_chart(fig, key=f"{key}_{view.name}", config={"displayModeBar": False})
            if metrics:
                summary_metrics(view, threshold, result.attacked)
            st.caption(channel_caption(view, sort, threshold, result.attacked))
