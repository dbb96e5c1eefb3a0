"""Plotly figures of deployments, built in Python and drawn by the local plotly.js."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from apps.registry.charts import figure_json

__all__ = ["canary_figure", "figure_json", "traffic_figure"]

LAYOUT = {"margin": {"l": 40, "r": 10, "t": 10, "b": 30}, "height": 220, "template": "plotly_white"}


def traffic_figure(traffic: list[dict[str, Any]]) -> go.Figure:
    """The live split as one stacked horizontal bar (shadow drawn hatched at 0% for visibility)."""
    figure = go.Figure()
    for row in traffic:
        name = f"v{row['version']}" + (" (shadow)" if row["shadow"] else "")
        figure.add_bar(
            y=["traffic"],
            x=[row["weight"]],
            name=name,
            orientation="h",
            text=[f"{name}: {row['weight']}%"],
            textposition="inside",
        )
    figure.update_layout(barmode="stack", showlegend=True, xaxis={"range": [0, 100], "ticksuffix": "%"}, **LAYOUT)
    figure.update_layout(height=140)
    return figure


def canary_figure(decisions: list[dict[str, Any]]) -> go.Figure:
    """Per analysis window: canary vs stable error rate (left axis) and p99 latency (right axis)."""
    x = [f"{d['percent']}% #{i + 1}" for i, d in enumerate(decisions)]

    def series(side: str, key: str) -> list[float | None]:
        values = []
        for decision in decisions:
            stats = (decision.get("numbers") or {}).get(side) or {}
            if key == "error_rate":
                requests = stats.get("requests") or 0
                values.append((stats.get("errors") or 0) / requests * 100 if requests else None)
            else:
                values.append(stats.get(key))
        return values

    figure = go.Figure()
    figure.add_scatter(x=x, y=series("stable", "error_rate"), name="stable errors %", mode="lines+markers")
    figure.add_scatter(x=x, y=series("canary", "error_rate"), name="canary errors %", mode="lines+markers")
    figure.add_scatter(x=x, y=series("stable", "p99_ms"), name="stable p99 ms", yaxis="y2", line={"dash": "dot"})
    figure.add_scatter(x=x, y=series("canary", "p99_ms"), name="canary p99 ms", yaxis="y2", line={"dash": "dot"})
    figure.update_layout(
        yaxis={"title": "errors %", "rangemode": "tozero"},
        yaxis2={"title": "p99 ms", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h"},
        **LAYOUT,
    )
    return figure
