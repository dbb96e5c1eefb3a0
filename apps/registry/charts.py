"""Plotly figures of the registry, built in Python and drawn by the local plotly.js."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

# Escapes that keep figure JSON inert inside a <script> element (names may contain "</script>").
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}
KIND_COLOURS = {
    "dataset version": "#2f9e44",
    "split": "#74b816",
    "pipeline run": "#845ef7",
    "run": "#1f6feb",
    "model version": "#e8590c",
    "deployment": "#0c8599",
}


def figure_json(figure: go.Figure) -> SafeString:
    return mark_safe(figure.to_json().translate(_SCRIPT_ESCAPES))  # noqa: S308 (escaped above)


def lineage_figure(lineage: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """A left-to-right graph: one column per layer (data, pipeline, run, version, deployments)."""
    nodes = lineage["nodes"]
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        by_layer.setdefault(node["layer"], []).append(node)
    position: dict[str, tuple[float, float]] = {}
    for layer, members in by_layer.items():
        for index, node in enumerate(members):
            position[node["id"]] = (float(layer), float(index) - (len(members) - 1) / 2)
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for edge in lineage["edges"]:
        (x0, y0), (x1, y1) = position[edge["source"]], position[edge["target"]]
        edge_x += [x0, x1, None]
        edge_y += [y0, y1, None]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": "#adb5bd", "width": 2}, hoverinfo="skip")
    )
    figure.add_trace(
        go.Scatter(
            x=[position[n["id"]][0] for n in nodes],
            y=[position[n["id"]][1] for n in nodes],
            mode="markers+text",
            text=[n["label"] for n in nodes],
            textposition="bottom center",
            customdata=[[n["kind"], n["url"]] for n in nodes],
            hovertemplate="%{customdata[0]}<br><b>%{text}</b><extra></extra>",
            marker={
                "size": 22,
                "color": [KIND_COLOURS.get(n["kind"], "#868e96") for n in nodes],
                "line": {"width": 2, "color": "#fff"},
                "symbol": ["diamond" if n["kind"] == "model version" else "circle" for n in nodes],
            },
        )
    )
    layers = sorted(by_layer) or [0]
    max_column = max((len(m) for m in by_layer.values()), default=1)
    height = 110 + 60 * max_column
    figure.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 20, "r": 20, "t": 10, "b": 10},
        showlegend=False,
        xaxis={"visible": False, "range": [layers[0] - 0.6, layers[-1] + 0.6]},
        yaxis={"visible": False, "range": [-max_column / 2 - 0.6, max_column / 2 + 0.3]},
        dragmode=False,
    )
    return figure
