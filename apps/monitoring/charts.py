"""Plotly figures of drift monitoring, built in Python and drawn by the local plotly.js (as the deployment page)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import plotly.graph_objects as go

from apps.deployments.charts import figure_json
from apps.monitoring.models import DriftReport

__all__ = ["drift_share_figure", "figure_json", "histogram_figure"]

LAYOUT = {"margin": {"l": 40, "r": 10, "t": 10, "b": 30}, "height": 220, "template": "plotly_white"}


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def histogram_figure(histogram: dict[str, Any]) -> go.Figure:
    """Reference and current share per bin (numeric) or category, overlaid; shares, since the sizes differ."""
    figure = go.Figure()
    x = histogram["x"]
    for side, colour in (("reference", "#868e96"), ("current", "#1f6feb")):
        counts = histogram[side]
        figure.add_bar(
            x=x,
            y=_shares(counts),
            name=f"{side} ({sum(counts)})",
            marker_color=colour,
            opacity=0.6,
            customdata=counts,
            hovertemplate="%{x}: %{y:.1%} (%{customdata})",
        )
    figure.update_layout(
        barmode="overlay",
        bargap=0.05 if histogram["kind"] == "numeric" else 0.2,
        yaxis={"tickformat": ".0%", "rangemode": "tozero"},
        legend={"orientation": "h"},
        **LAYOUT,
    )
    return figure


def drift_share_figure(history: list[DriftReport], threshold: float = 0.5) -> go.Figure:
    """The share of drifted columns per report over time, with the dataset-drift threshold."""
    figure = go.Figure()
    figure.add_scatter(
        x=[report.window_end for report in history],
        y=[report.drift_share for report in history],
        mode="lines+markers",
        name="drift share",
        marker={"color": ["#e03131" if report.dataset_drift else "#2f9e44" for report in history]},
    )
    if history:
        figure.add_hline(y=threshold, line={"dash": "dot", "color": "#e03131"}, annotation_text="dataset drift")
    xaxis: dict[str, Any] = {"type": "date"}
    if len(history) == 1:
        # One point: a day around it, not an axis zoomed to a millisecond.
        moment = history[0].window_end
        xaxis["range"] = [moment - timedelta(hours=12), moment + timedelta(hours=12)]
    figure.update_layout(xaxis=xaxis, yaxis={"range": [0, 1.05], "tickformat": ".0%"}, showlegend=False, **LAYOUT)
    return figure
