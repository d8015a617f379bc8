"""The Lecture's figures: bar charts of one block's channels with the step's numbers marked on them
(switched-on lines, the switched-on channels counted, the channels a step talks about pointed at), the
CAS heads' guess through an attack's steps, and the bundled models' accuracies from their cards.

Builders take plain values and return ``go.Figure`` objects; no Streamlit, so the tests read every
trace and every note the page draws. Every trace drawn has a legend entry (``showlegend`` on its first
appearance), and every panel's numbers are annotations the tests can read back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from . import figures

# One visual language across the pages: an attack that succeeds is red, a defence that holds is green
# (the Attack Lab's verdicts: st.error and st.success). The bars keep the app's clean blue and
# adversarial red; the channels a step talks about are pointed at in orange (switched on by the
# attack) or purple (suppressed by the mask).
ATTACK_SUCCEEDS = "#d62728"
DEFENCE_HOLDS = "#2ca02c"
SWITCHED_ON_BY_ATTACK = "#ff7f0e"
SUPPRESSED = "#6a3d9a"
MASK_BAR = "#555555"
SHADE = "rgba(31, 119, 180, 0.10)"


@dataclass
class Series:
    """One row of bars: a legend name, its values (in the panel's channel order) and its colour."""

    name: str
    values: np.ndarray
    colour: str


@dataclass
class Line:
    """A horizontal dotted line across the panel (a switched-on line)."""

    name: str
    level: float
    colour: str


@dataclass
class Marks:
    """Markers above the bars at ``positions`` (indices in the panel's order), for the channels a step
    talks about; ``name`` is their legend entry (with their count)."""

    name: str
    positions: np.ndarray
    heights: np.ndarray
    colour: str
    symbol: str = "triangle-down"


@dataclass
class Panel:
    title: str
    bars: list[Series]
    lines: list[Line] = field(default_factory=list)
    marks: list[Marks] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # written inside the panel, top right
    shade: int = 0  # the first ``shade`` channels shaded (the switched-on ones, when sorted strongest first)
    y_range: tuple[float, float] | None = None
    y_title: str = "average activation"


def channel_panels(panels: list[Panel], x_title: str, side_by_side: bool = False,
                   height: int | None = None, top: int | None = None) -> go.Figure:
    """The panels one above the other (or side by side, sharing one y axis), one bar per channel."""
    n = len(panels)
    gap = (0.06 if side_by_side else 0.12) if n > 1 else 0.0
    size = (1 - gap * (n - 1)) / n
    font, title_font = figures.fonts()
    big = figures.presentation()
    default = (330 if n == 1 else (380 if side_by_side else 250 * n))
    layout = dict(height=int((height or default) * (1.15 if big else 1)), font=font, bargap=0.05,
                  barmode="group", hovermode="closest", annotations=[], shapes=[],
                  margin=dict(l=10, r=10, t=int((top or 80) * (1.4 if big else 1)), b=10),
                  legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0))
    data: list[dict] = []
    seen: set[str] = set()

    def legend(name: str) -> bool:
        first = name not in seen
        seen.add(name)
        return first

    for i, p in enumerate(panels, start=1):
        ax = figures._axis(i)
        if side_by_side:
            left = (i - 1) * (size + gap)
            xdom, ydom = [left, left + size], [0.0, 1.0]
        else:
            top = 1 - (i - 1) * (size + gap)
            xdom, ydom = [0.0, 1.0], [max(0.0, top - size), min(1.0, top)]
        k = len(p.bars[0].values)
        pos = np.arange(k)
        show_x_title = side_by_side or i == n
        layout[f"xaxis{ax}"] = dict(domain=xdom, anchor=f"y{ax}", range=[-0.7, k - 0.3],
                                    title=dict(text=x_title) if show_x_title else None)
        y = dict(domain=ydom, anchor=f"x{ax}", zerolinecolor="#999",
                 title=dict(text=p.y_title) if (i == 1 or not side_by_side) else None)
        if p.y_range:
            y["range"] = list(p.y_range)
        layout[f"yaxis{ax}"] = y
        layout["annotations"].append(dict(text=p.title, x=sum(xdom) / 2, y=ydom[1], xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False, font=title_font))
        for j, note in enumerate(p.notes):
            layout["annotations"].append(dict(text=note, x=xdom[1], y=ydom[1] - 0.01 - j * 0.07,
                                              xref="paper", yref="paper", xanchor="right", yanchor="top",
                                              showarrow=False, align="right", bgcolor="rgba(255,255,255,0.85)",
                                              font=dict(size=font["size"])))
        if p.shade:
            layout["shapes"].append(dict(type="rect", xref=f"x{ax}", yref=f"y{ax} domain", x0=-0.5, x1=p.shade - 0.5,
                                         y0=0, y1=1, fillcolor=SHADE, line=dict(width=0), layer="below"))
            name = f"switched on, shaded ({p.shade})"  # the shading's legend entry
            data.append(dict(type="scatter", mode="markers", x=[None], y=[None], name=name, showlegend=legend(name),
                             marker=dict(color="rgba(31, 119, 180, 0.25)", symbol="square", size=14),
                             xaxis=f"x{ax}", yaxis=f"y{ax}", hoverinfo="skip"))
        for s in p.bars:
            data.append(dict(type="bar", x=pos, y=s.values, name=s.name, legendgroup=s.name,
                             showlegend=legend(s.name), marker=dict(color=s.colour, line=dict(width=0)),
                             xaxis=f"x{ax}", yaxis=f"y{ax}",
                             hovertemplate="%{y:.3f}<extra>" + s.name + "</extra>"))
        for line in p.lines:
            data.append(dict(type="scatter", mode="lines", x=[-0.5, k - 0.5], y=[line.level, line.level],
                             name=line.name, legendgroup=line.name, showlegend=legend(line.name),
                             line=dict(color=line.colour, dash="dot", width=2), xaxis=f"x{ax}", yaxis=f"y{ax}",
                             hoverinfo="skip"))
        for m in p.marks:
            data.append(dict(type="scatter", mode="markers", x=m.positions, y=m.heights, name=m.name,
                             legendgroup=m.name, showlegend=legend(m.name),
                             marker=dict(color=m.colour, symbol=m.symbol, size=10 if big else 8),
                             xaxis=f"x{ax}", yaxis=f"y{ax}", hoverinfo="skip"))
    return figures._figure(data, layout)


def head_guess_figure(steps: list[int], true_prob_final: list[float], true_prob_head: list[float],
                      class_name: str, note: str = "") -> go.Figure:
    """The probability of the true class through an attack's steps: the final prediction and the CAS
    head whose guess picks the mask (step 0: the clean image)."""
    font, _ = figures.fonts()
    data = [dict(type="scatter", mode="lines+markers", x=steps, y=[100 * p for p in true_prob_final],
                 name=f"final prediction: “{class_name}”", line=dict(color=figures.NATURAL, width=3)),
            dict(type="scatter", mode="lines+markers", x=steps, y=[100 * p for p in true_prob_head],
                 name=f"CAS head (picks the mask): “{class_name}”",
                 line=dict(color=SUPPRESSED, dash="dash", width=3), marker=dict(symbol="diamond"))]
    layout = dict(height=330, font=font, margin=dict(l=10, r=10, t=70, b=10),
                  legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0),
                  xaxis=dict(title=dict(text="PGD step (0 = the clean image)"), dtick=2),
                  yaxis=dict(title=dict(text=f"probability of “{class_name}”"), range=[0, 105], ticksuffix="%"),
                  annotations=[dict(text=note, x=1, y=0.05, xref="paper", yref="paper", xanchor="right",
                                    yanchor="bottom", showarrow=False, font=dict(size=font["size"]))] if note else [])
    return figures._figure(data, layout)


def card_accuracy_figure(rows: list[tuple[str, str, float, float, int]], attack_colours: dict[str, str]) -> go.Figure:
    """The models' accuracies from their cards: rows of (model label, attack column, accuracy %,
    standard error, images), one bar per row grouped by model, with the standard error as error bars."""
    font, _ = figures.fonts()
    data = []
    for attack in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == attack]
        data.append(dict(type="bar", name=attack, x=[r[0] for r in mine], y=[r[2] for r in mine],
                         error_y=dict(type="data", array=[r[3] for r in mine], visible=True),
                         marker=dict(color=attack_colours.get(attack, "#888")),
                         text=[f"{r[2]:.1f}%" for r in mine], textposition="outside",
                         customdata=[r[4] for r in mine],
                         hovertemplate="%{x}: %{y:.1f}% ± %{error_y.array:.1f} on %{customdata} images<extra>"
                                       + attack + "</extra>"))
    layout = dict(height=330, font=font, barmode="group", margin=dict(l=10, r=10, t=70, b=10),
                  legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", xanchor="left", x=0),
                  xaxis=dict(), yaxis=dict(title=dict(text="accuracy under attack (cards)"), range=[0, 100],
                                           ticksuffix="%"))
    return figures._figure(data, layout)


# built once for the server and drawn by every session (see app.common.figures.SHARED): never changed after
channel_panels = figures.SHARED.share(channel_panels, figures._mode)
head_guess_figure = figures.SHARED.share(head_guess_figure, figures._mode)
card_accuracy_figure = figures.SHARED.share(card_accuracy_figure, figures._mode)

