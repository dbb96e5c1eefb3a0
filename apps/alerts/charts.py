"""Plotly figures of alerts, built in Python and drawn by the local plotly.js."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from apps.deployments.charts import figure_json

__all__ = ["figure_json", "preview_figure"]

LAYOUT = {"margin": {"l": 50, "r": 10, "t": 10, "b": 30}, "height": 240, "template": "plotly_white"}


def preview_figure(points: list[dict[str, Any]], threshold: float | None, label: str) -> go.Figure:
    """The figure over the last 24 h with the rule's threshold; gaps where it had no value."""
    figure = go.Figure()
    figure.add_scatter(
        x=[point["at"] for point in points],
        y=[point["value"] for point in points],
        mode="lines+markers",
        name=label,
        connectgaps=False,
        text=[point["reason"] for point in points],
        hovertemplate="%{x}: %{y:.4g} %{text}<extra></extra>",
    )
    if threshold is not None:
        figure.add_hline(y=threshold, line={"dash": "dot", "color": "#e03131"}, annotation_text="threshold")
    figure.update_layout(xaxis={"type": "date"}, showlegend=False, **LAYOUT)
    return figure
