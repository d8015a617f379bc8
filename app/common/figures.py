"""Plotly figures of the pages. Builders take numpy arrays and return ``go.Figure`` objects; they never
call Streamlit, so they can be timed and tested on their own.

Figures are written as one data list and one layout dict (panels placed with axis ``domain``\\ s), which
builds about ten times faster than ``make_subplots`` followed by ``update_*`` calls; that matters for
the Attack Lab's one-second update.

Colours are fixed across the app: natural (clean) image blue, adversarial image red. The CAS mask is a
signed weight row (a channel is multiplied by it: a weight near 0 suppresses the channel, a negative
one flips its sign), so its panel is drawn in a diverging scale: orange for positive weights, purple for
negative ones, pale near zero; the clean image's bar is outlined in blue, the adversarial one in red.

In presentation mode (:mod:`app.common.presentation`) the fonts are larger; the app sets
:data:`presentation` to the function that says whether it is on.

Plotly checks every property of a figure as it is built, which costs more than drawing it (about
8 ms of a 10 ms bar chart): a server for a class skips that check (``CAS_VALIDATE_FIGURES=0``, the
default outside the tests), and the test suite turns it on, so every builder is checked there.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import plotly.graph_objects as go

import cas

from .defense_text import label_of, text_of
from .sharing import SharedFigures

VALIDATE = os.environ.get("CAS_VALIDATE_FIGURES", "0") == "1"  # check every property as a figure is built
NATURAL = "#1f77b4"
ADVERSARIAL = "#d62728"
FONT = dict(size=14)
TITLE_FONT = dict(size=14, color="#555")
BIG_FONT = dict(size=20)
BIG_TITLE_FONT = dict(size=20, color="#444")
LEGEND_FONT = dict(size=16)
# diverging scale of the mask weights: negative (flips the channel) purple, near 0 pale, positive orange
MASK_SCALE = [[0.0, "#542788"], [0.25, "#998ec3"], [0.5, "#f7f7f7"], [0.75, "#f1a340"], [1.0, "#b35806"]]
MASK_SCALE_POSITIVE = [[0.0, "#f7f7f7"], [0.5, "#f1a340"], [1.0, "#b35806"]]  # its positive half (masks >= 0)
MASK_SENTENCE = text_of("cas").mask  # what CAS's mask does (each defence's: app.common.defense_text)

presentation: Callable[[], bool] = lambda: False  # set by app.common.presentation


def fonts() -> tuple[dict, dict]:
    """(font, panel-title font) for the current mode."""
    return (BIG_FONT, BIG_TITLE_FONT) if presentation() else (FONT, TITLE_FONT)


def _series(show_adversarial: bool) -> list[tuple[int, str, str]]:
    """(row of the (2, ...) arrays, legend label, colour) of the curves to draw."""
    out = [(0, "clean image", NATURAL)]
    return out + [(1, "adversarial image", ADVERSARIAL)] if show_adversarial else out


def _axis(n: int) -> str:
    """Plotly's axis suffix: '' for the first axis, then '2', '3', ..."""
    return "" if n == 1 else str(n)


def _title(text: str, x: float, y: float) -> dict:
    """A panel title centred at paper coordinates (x, y)."""
    return dict(text=text, x=x, y=y, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                showarrow=False, font=fonts()[1])


def _layout(height: int, **extra) -> dict:
    """Shared look: the legend in a band at the very top (above the panel titles), small margins."""
    big = presentation()
    return dict(height=int(height * 1.15) if big else height,
                margin=dict(l=10, r=10, t=115 if big else 75, b=10), font=fonts()[0], bargap=0.05,
                barmode="group", hovermode="closest", annotations=[],
                legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0),
                **extra)


def _figure(data: list, layout: dict) -> go.Figure:
    """The figure; in presentation mode every axis and the legend get the large font too (the app's
    chart theme sets their fonts, which the layout's global font does not override)."""
    if presentation():
        for key, axis in layout.items():
            if key.startswith(("xaxis", "yaxis")):
                axis.setdefault("tickfont", BIG_FONT)
                if isinstance(axis.get("title"), dict):
                    axis["title"].setdefault("font", BIG_FONT)
        layout["legend"] = {**layout.get("legend", {}), "font": LEGEND_FONT}  # a narrow column may wrap it
    return go.Figure(data=data, layout=layout, _validate=VALIDATE)


def probability_figure(probs: np.ndarray, aux: list[tuple[str, np.ndarray]] | None = None,
                       show_adversarial: bool = True, highlight: int | None = None,
                       height: int = 340) -> go.Figure:
    """Class probabilities as horizontal bars, panels side by side: the final head, then each CAS
    module's auxiliary head (``aux``: (module name, (2, classes) probabilities)). ``probs`` is
    (2, classes): row 0 natural, row 1 adversarial. ``highlight``: a class index marked with ▶."""
    panels = [("Final prediction", probs)] + [(f"Auxiliary head at {name}", p) for name, p in (aux or [])]
    n = len(panels)
    gap = 0.05
    width = (1 - gap * (n - 1)) / n
    names = [("▶ " if i == highlight else "") + c for i, c in enumerate(cas.CLASSES)]
    layout = _layout(height)
    data = []
    for i, (title, p) in enumerate(panels, start=1):
        left = (i - 1) * (width + gap)
        layout[f"xaxis{_axis(i)}"] = dict(domain=[max(0.0, left), min(1.0, left + width)], range=[0, 100],
                                          ticksuffix="%",
                                          anchor=f"y{_axis(i)}")
        layout[f"yaxis{_axis(i)}"] = dict(anchor=f"x{_axis(i)}", autorange="reversed",
                                          showticklabels=i == 1, **({} if i == 1 else {"matches": "y"}))
        layout["annotations"].append(_title(title, left + width / 2, 1.0))
        for r, label, colour in _series(show_adversarial):
            data.append(dict(type="bar", orientation="h", y=names, x=p[r] * 100, name=label,
                             marker=dict(color=colour), legendgroup=label, showlegend=i == 1,
                             xaxis=f"x{_axis(i)}", yaxis=f"y{_axis(i)}",
                             hovertemplate="%{y}: %{x:.1f}%<extra>" + label + "</extra>"))
    return _figure(data, layout)


def channel_figure(view, order: np.ndarray, show_adversarial: bool = True,
                   height: int | None = None, threshold: float | None = None,
                   top_k: int | None = None) -> go.Figure:
    """Per-channel activations at one mask module (a :class:`app.common.image_attack.PointView`).

    For a mask module (CAS or a relative): three aligned panels, one above the other — the block's output
    before the mask, the mask itself (for an element-wise mask, its spatial mean per channel) and what
    passes on after the mask — each with the natural (blue) and adversarial (red) image, titled for the
    view's defence. For a model without one: one panel (its channels at the same place). Channels are drawn
    in ``order`` (an array of channel numbers); hovering a bar shows its channel number and value.

    The mask panel uses the diverging scale :data:`MASK_SCALE` for the clean image's weights and red
    diamonds for the adversarial image's (where they leave the bars, the attack switched the mask).
    ``threshold`` (in % of the strongest channel): a dotted line per image at the level above which a
    channel counts as switched on. ``top_k``: only the first ``top_k`` channels of ``order`` (narrow
    columns)."""
    k = view.before.shape[1]
    channels = np.asarray(order)[:top_k] if top_k else np.asarray(order)
    pos = np.arange(len(channels))
    short = bool(top_k)  # a narrow column: short titles
    if view.is_cas:
        words, label = text_of(view.defense), label_of(view.defense)
        mask_title = ("Mask, spatial mean" if view.element_wise else "Mask weights") if short else words.mask_title
        panels = [("Before the mask" if short else f"Before the {label} mask", view.before),
                  (mask_title, view.mask),
                  ("After the mask" if short else words.after_title, view.after)]
    else:
        panels = [("Activation (no CAS)" if short else "Activation (no CAS: nothing masked)", view.before)]
    n = len(panels)
    gap = 0.09 if n > 1 else 0.0
    size = (1 - gap * (n - 1)) / n
    layout = _layout(height or (540 if view.is_cas else 280))
    data = []
    for i, (title, values) in enumerate(panels, start=1):
        top = 1 - (i - 1) * (size + gap)
        axis = f"y{_axis(i)}"
        layout[f"yaxis{_axis(i)}"] = dict(domain=[max(0.0, top - size), min(1.0, top)], anchor="x",
                                          zerolinecolor="#999")
        layout["annotations"].append(_title(title, 0.5, top))
        is_mask = view.is_cas and i == 2
        for r, label, colour in _series(show_adversarial):
            hover = "channel %{customdata}: %{y:.3f}<extra>" + label + "</extra>"
            if is_mask and r == 1:
                data.append(dict(type="scatter", mode="markers", x=pos, y=values[r][channels],
                                 customdata=channels, name="mask, adversarial",
                                 marker=dict(color=colour, symbol="diamond", size=5), showlegend=True,
                                 xaxis="x", yaxis=axis, hovertemplate=hover))
            elif is_mask:
                lim = float(np.abs(values).max()) or 1.0
                data.append(dict(type="bar", x=pos, y=values[r][channels], customdata=channels,
                                 name="mask, clean (orange +, purple −)",
                                 marker=dict(color=values[r][channels], colorscale=MASK_SCALE, cmin=-lim, cmax=lim,
                                             line=dict(width=0)),
                                 showlegend=True, xaxis="x", yaxis=axis, hovertemplate=hover))
            else:
                data.append(dict(type="bar", x=pos, y=values[r][channels], customdata=channels, name=label,
                                 marker=dict(color=colour, line=dict(width=0)), legendgroup=label,
                                 showlegend=i == 1, xaxis="x", yaxis=axis, hovertemplate=hover))
            if threshold and not is_mask:
                level = threshold / 100 * float(np.abs(values[r]).max())
                data.append(dict(type="scatter", mode="lines", x=[-0.5, len(channels) - 0.5], y=[level, level],
                                 line=dict(color=colour, dash="dot", width=1.5), xaxis="x", yaxis=axis,
                                 name=f"switched-on line ({threshold:g}%)",
                                 legendgroup="threshold", showlegend=i == 1 and r == 0, hoverinfo="skip"))
    which = (f"first {len(channels)} of {k} channels" if top_k and top_k < k
             else f"channels ({k}), in the chosen order")
    layout["xaxis"] = dict(anchor=f"y{_axis(n)}", title=dict(text=which))
    return _figure(data, layout)


def spatial_figure(before: np.ndarray, mask: np.ndarray, channel: int, label: str = "",
                   show_adversarial: bool = True, height: int = 300) -> go.Figure:
    """One channel of an element-wise mask module, position by position: heatmaps of the feature map the
    module reads (``before``, (2, H, W): clean, adversarial) and of the mask (``mask``, (2, H, W)), each
    cell labelled with its value. Both feature maps share one colour scale (so their colours compare); the
    masks share :data:`MASK_SCALE` centred on 0 when they have negative weights, else
    :data:`MASK_SCALE_POSITIVE` from 0 to their largest value (at least 1). ``channel`` names the channel
    in the hover text; ``label``: the defence's name for the titles; ``show_adversarial``: False for the
    clean image alone."""
    rows = [0, 1] if show_adversarial else [0]
    who = {0: "clean image", 1: "adversarial image"}
    mask_name = f"{label} mask" if label else "Mask"
    top = float(np.abs(before[rows]).max()) or 1.0
    scales = {"map": {"zmin": 0.0 if before[rows].min() >= 0 else -top, "zmax": top, "colorscale": "Blues"}}
    if (mask[rows] < 0).any():
        lim = float(np.abs(mask[rows]).max())
        scales["mask"] = {"zmin": -lim, "zmax": lim, "colorscale": MASK_SCALE}
    else:
        scales["mask"] = {"zmin": 0.0, "zmax": max(1.0, float(mask[rows].max())), "colorscale": MASK_SCALE_POSITIVE}
    panels = ([(f"Feature map, {who[r]}", before[r], "map") for r in rows]
              + [(f"{mask_name}, {who[r]}", mask[r], "mask") for r in rows])
    gap = 0.04
    width = (1 - gap * (len(panels) - 1)) / len(panels)
    layout = _layout(height)
    layout["margin"] = {"l": 10, "r": 10, "t": 50, "b": 10}
    data = []
    for i, (title, values, kind) in enumerate(panels, start=1):
        left, axis = (i - 1) * (width + gap), _axis(i)
        h, w = values.shape
        layout[f"xaxis{axis}"] = {"domain": [left, min(1.0, left + width)], "anchor": f"y{axis}",
                                  "showticklabels": False, "constrain": "domain"}
        layout[f"yaxis{axis}"] = {"anchor": f"x{axis}", "autorange": "reversed", "showticklabels": False,
                                  "scaleanchor": f"x{axis}", "constrain": "domain"}
        layout["annotations"].append(_title(title, left + width / 2, 1.0))
        hover = f"channel {channel}, row %{{y}}, column %{{x}}: %{{z:.3f}}<extra>{title}</extra>"
        data.append({"type": "heatmap", "z": values, "x": list(range(w)), "y": list(range(h)), "showscale": False,
                     "texttemplate": "%{z:.2f}", "xaxis": f"x{axis}", "yaxis": f"y{axis}", "hovertemplate": hover,
                     **scales[kind]})
    return _figure(data, layout)


def column_channel_figure(view, order: np.ndarray, show_adversarial: bool = True, threshold: float | None = None,
                          top_k: int | None = None) -> go.Figure:
    """:func:`channel_figure` for one of Compare's narrow columns: taller, without a legend (a caption
    below says what the colours are)."""
    fig = channel_figure.build(view, order, show_adversarial, height=560, threshold=threshold, top_k=top_k)
    fig.update_layout(showlegend=False, margin=dict(t=40))
    return fig


def lecture_channel_figure(view, order: np.ndarray, show_adversarial: bool = True, height: int | None = None,
                           threshold: float | None = None, narrow: bool = False) -> go.Figure:
    """:func:`channel_figure` for the Lecture; ``narrow``: half the page's width, so the legend gets a
    smaller font and more room above the panels."""
    fig = channel_figure.build(view, order, show_adversarial, height=height, threshold=threshold)
    if narrow:
        fig.update_layout(legend=dict(font=dict(size=13)), margin=dict(t=150 if presentation() else 120))
    return fig


def big_fonts(fig: go.Figure, height: int = 420) -> go.Figure:
    """``fig`` with larger fonts (and at least ``height`` pixels) in presentation mode; as it is otherwise."""
    if presentation():
        size = BIG_FONT["size"]
        fig.update_layout(font_size=size, title_font_size=size, legend_font_size=LEGEND_FONT["size"],
                          height=max(height, fig.layout.height or 0))
        fig.update_xaxes(tickfont_size=size, title_font_size=size)
        fig.update_yaxes(tickfont_size=size, title_font_size=size)
    return fig


# -- the Train page ------------------------------------------------------------------------------------

def training_curves_figure(records: list[dict], height: int = 330) -> go.Figure:
    """Loss (left) and accuracies (right) per epoch: train, held-out clean, held-out robust."""
    epochs = [r["epoch"] for r in records]
    layout = dict(height=height, margin=dict(l=10, r=10, t=75, b=10), font=FONT, hovermode="x unified",
                  legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0),
                  xaxis=dict(domain=[0, 0.42], title=dict(text="epoch"), dtick=1 if len(epochs) < 15 else None),
                  yaxis=dict(anchor="x", title=dict(text="loss")),
                  xaxis2=dict(domain=[0.55, 1], anchor="y2", title=dict(text="epoch"),
                              dtick=1 if len(epochs) < 15 else None),
                  yaxis2=dict(anchor="x2", range=[0, 100], ticksuffix="%", title=dict(text="accuracy")),
                  annotations=[
                      dict(text="Training loss", x=0.21, y=1.0, xref="paper", yref="paper", xanchor="center",
                           yanchor="bottom", showarrow=False, font=TITLE_FONT),
                      dict(text="Accuracy", x=0.775, y=1.0, xref="paper", yref="paper", xanchor="center",
                           yanchor="bottom", showarrow=False, font=TITLE_FONT)])
    data = [dict(type="scatter", mode="lines+markers", x=epochs, y=[r.get("loss") for r in records],
                 name="loss", line=dict(color="#555"), xaxis="x", yaxis="y")]
    series = [("train_acc", "train (attacked training images)", "#999", "dash"),
              ("heldout_clean", "held-out clean", NATURAL, "solid"),
              ("heldout_robust", "held-out under attack", ADVERSARIAL, "solid")]
    for key, label, colour, dash in series:
        if any(key in r for r in records):
            data.append(dict(type="scatter", mode="lines+markers", x=epochs, y=[r.get(key) for r in records],
                             name=label, line=dict(color=colour, dash=dash), xaxis="x2", yaxis="y2",
                             hovertemplate="%{y:.1f}%"))
    return go.Figure(data=data, layout=layout)


# -- many images: channel statistics and robustness ----------------------------------------------------

def stats_figures(point, stage: str, threshold: float, label: str) -> tuple[go.Figure, go.Figure]:
    """The Channel statistics page's pair for one CAS point (a :class:`cas.stats.PointStats`) and stage:
    each channel's average magnitude (the paper's Figure 1) and how often it fires (its uniformity figure)."""
    from cas import stats as cas_stats

    return (big_fonts(cas_stats.magnitude_figure(point, stage, threshold, f"Magnitude, {label}")),
            big_fonts(cas_stats.frequency_figure(point, stage, threshold, f"Frequency, {label}")))


def ladder_figure(columns: list[str], accuracies: dict[str, list[float]]) -> go.Figure:
    """Grouped bars: each model's accuracy (%) under each of ``columns`` (model -> one value per column)."""
    fig = go.Figure()
    for name, values in accuracies.items():
        fig.add_bar(name=name, x=columns, y=values)
    fig.update_layout(height=320, yaxis_title="accuracy (%)", margin=dict(l=10, r=10, t=30, b=10), barmode="group")
    return big_fonts(fig)


def eps_curve_figure(curves: list[tuple[str, list[float], list[float], bool]]) -> go.Figure:
    """Accuracy (%) against ε (/255): one line per (legend name, ε values, accuracies, dashed)."""
    fig = go.Figure()
    for name, eps, accs, dashed in curves:
        fig.add_scatter(x=list(eps), y=accs, mode="lines+markers", name=name,
                        line=dict(dash="dash" if dashed else "solid"))
    fig.update_layout(height=380, xaxis_title="ε (/255)", yaxis_title="accuracy (%)",
                      margin=dict(l=10, r=10, t=30, b=10), yaxis_range=[0, 100])
    return big_fonts(fig)


# -- shared by every session ---------------------------------------------------------------------------
# Every visitor of a lecture step or of one image's attack sees the same figures: each is built once for
# the server (keyed on its arguments' content and the presentation mode) and drawn by every session.
# Pages draw these figures and never change them; a builder that adjusts another's figure calls its
# unshared ``.build``.
SHARED = SharedFigures(64 * 2**20)


def _mode() -> bool:
    return bool(presentation())


probability_figure = SHARED.share(probability_figure, _mode)
channel_figure = SHARED.share(channel_figure, _mode)
spatial_figure = SHARED.share(spatial_figure, _mode)
column_channel_figure = SHARED.share(column_channel_figure, _mode)
lecture_channel_figure = SHARED.share(lecture_channel_figure, _mode)
stats_figures = SHARED.share(stats_figures, _mode)
ladder_figure = SHARED.share(ladder_figure, _mode)
eps_curve_figure = SHARED.share(eps_curve_figure, _mode)
