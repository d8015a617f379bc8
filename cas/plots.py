"""The library's Plotly figures: the paper's channel figures (natural vs adversarial bars) and the
report's accuracy-vs-ε curves. Colours are shared, so natural is always blue and adversarial red."""
from __future__ import annotations

import plotly.graph_objects as go
import torch

NATURAL, ADVERSARIAL = "#1f77b4", "#d62728"


def overlay_bars(natural: torch.Tensor, adversarial: torch.Tensor, title: str, xtitle: str, ytitle: str):
    """Natural and adversarial curves as overlaid bars; title on top, legend under the axis."""
    k = list(range(natural.shape[0]))
    fig = go.Figure([go.Bar(x=k, y=natural.numpy(), name="natural", marker_color=NATURAL, opacity=0.75),
                     go.Bar(x=k, y=adversarial.numpy(), name="adversarial", marker_color=ADVERSARIAL,
                            opacity=0.6)])
    fig.update_layout(barmode="overlay", bargap=0, height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title={"text": title, "x": 0, "xanchor": "left"}, xaxis_title=xtitle, yaxis_title=ytitle,
                      legend={"orientation": "h", "y": -0.25, "yanchor": "top", "x": 0.5, "xanchor": "center"})
    return fig


def accuracy_curves(eps_values: list[float], curves: dict[str, list[float]]):
    """Accuracy (percent) against the budget (drawn in /255), one line per attack label of ``curves``."""
    fig = go.Figure()
    for label, acc in curves.items():
        fig.add_scatter(x=[e * 255 for e in eps_values], y=acc, mode="lines+markers", name=label)
    fig.update_layout(xaxis_title="ε (/255)", yaxis_title="accuracy (%)", yaxis_range=[0, 100], height=420,
                      margin={"l": 50, "r": 20, "t": 20, "b": 50}, legend={"orientation": "h", "y": -0.2})
    return fig
