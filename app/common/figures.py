"""Plotly figures of the pages. Builders take numpy arrays and return ``go.Figure`` objects; they never
call Streamlit, so they can be timed and tested on their own.

Colours are fixed across the app: natural (clean) image blue, adversarial image red.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import cas

NATURAL = "#1f77b4"
ADVERSARIAL = "#d62728"
FONT = dict(size=14)


def _base_layout(fig: go.Figure, height: int) -> go.Figure:
    """Shared look: the legend in a band at the very top (above the panel titles), small margins."""
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=75, b=10), font=FONT, bargap=0.05,
                      legend=dict(orientation="h", yref="container", y=0.995, yanchor="top",
                                  xanchor="left", x=0),
                      hovermode="closest")
    fig.update_annotations(font_size=14)  # panel titles
    return fig


def _series(show_adversarial: bool) -> list[tuple[int, str, str]]:
    """(row of the (2, ...) arrays, legend label, colour) of the curves to draw."""
    out = [(0, "clean image", NATURAL)]
    return out + [(1, "adversarial image", ADVERSARIAL)] if show_adversarial else out


def probability_figure(probs: np.ndarray, aux: list[tuple[str, np.ndarray]] | None = None,
                       show_adversarial: bool = True, highlight: int | None = None,
                       height: int = 340) -> go.Figure:
    """Class probabilities as horizontal bars: the final head, then each CAS module's auxiliary head
    (``aux``: (module name, (2, classes) probabilities)). ``probs`` is (2, classes): row 0 natural,
    row 1 adversarial. ``highlight``: a class index marked with ▶ (the true label)."""
    aux = aux or []
    titles = ["Final prediction"] + [f"Auxiliary head at {name}" for name, _ in aux]
    fig = make_subplots(rows=1, cols=len(titles), shared_yaxes=True, subplot_titles=titles,
                        horizontal_spacing=0.03)
    names = [("▶ " if i == highlight else "") + c for i, c in enumerate(cas.CLASSES)]
    panels = [probs] + [p for _, p in aux]
    for col, p in enumerate(panels, start=1):
        for r, label, colour in _series(show_adversarial):
            fig.add_trace(go.Bar(y=names, x=p[r] * 100, orientation="h", name=label, marker_color=colour,
                                 legendgroup=label, showlegend=col == 1,
                                 hovertemplate="%{y}: %{x:.1f}%<extra>" + label + "</extra>"), row=1, col=col)
        fig.update_xaxes(range=[0, 100], ticksuffix="%", row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(barmode="group")
    return _base_layout(fig, height)


def channel_figure(view, order: np.ndarray, show_adversarial: bool = True,
                   height: int | None = None) -> go.Figure:
    """Per-channel activations at one CAS point (a :class:`app.common.lab.ModuleView`).

    For a CAS module: three aligned panels — the block's output before the mask, the mask itself and
    what passes on after the mask — each with the natural (blue) and adversarial (red) image. For a
    model without CAS: one panel (its channels at the same place). Channels are drawn in ``order``
    (an array of channel numbers); hovering a bar shows its channel number and value."""
    k = view.before.shape[1]
    channels = np.asarray(order)
    pos = np.arange(k)
    if view.is_cas:
        panels = [("Before the CAS mask", view.before),
                  ("CAS mask (one weight per channel)", view.mask),
                  ("After the mask (= before × mask)", view.after)]
    else:
        panels = [("Activation (no CAS: nothing masked)", view.before)]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.09,
                        subplot_titles=[p[0] for p in panels])
    for i, (_, values) in enumerate(panels, start=1):
        for r, label, colour in _series(show_adversarial):
            fig.add_trace(go.Bar(x=pos, y=values[r][channels], customdata=channels, name=label,
                                 marker_color=colour, marker_line_width=0, legendgroup=label,
                                 showlegend=i == 1,
                                 hovertemplate="channel %{customdata}: %{y:.3f}<extra>" + label + "</extra>"),
                          row=i, col=1)
    fig.update_layout(barmode="group")
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(title_text=f"channels ({k}), in the chosen order", row=len(panels), col=1)
    return _base_layout(fig, height or (540 if view.is_cas else 280))

