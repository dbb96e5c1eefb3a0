"""Plotly figures of dataset profiles, built in Python and rendered by the local plotly.js.

Figures are built from the stored profile alone (histogram bins and top categories), never from the
data, so a page with a chart per column stays fast whatever the dataset's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

from worker.datasets.schema import BOOLEAN, CATEGORICAL, INTEGER, NUMERIC

COLOURS = ("#1f6feb", "#e8590c")
# Escapes that keep figure JSON inert inside a <script> element (user data may contain "</script>").
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


@dataclass(frozen=True)
class Chart:
    column: str
    kind: str
    json: SafeString


def figure_json(figure: go.Figure) -> SafeString:
    return mark_safe(figure.to_json().translate(_SCRIPT_ESCAPES))


def _layout(title: str, *, x_title: str, y_title: str, legend: bool = False) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "template": "plotly_white",
        "height": 260,
        "margin": {"l": 48, "r": 12, "t": 36, "b": 44},
        "xaxis": {"title": {"text": x_title, "font": {"size": 11}}, "automargin": True},
        "yaxis": {"title": {"text": y_title, "font": {"size": 11}}, "automargin": True},
        "showlegend": legend,
        "legend": {"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right", "font": {"size": 11}},
        "bargap": 0.02,
        "barmode": "overlay",
    }


def _histogram_trace(histogram: dict[str, list], *, name: str, colour: str, density: bool) -> go.Bar | None:
    """Bars on the profile's own bin edges: counts, or densities so two versions with different bins compare."""
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    if not counts:
        return None
    total = sum(counts) or 1
    centres = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:], strict=True)]
    widths = [high - low for low, high in zip(edges[:-1], edges[1:], strict=True)]
    values = [count / total / width for count, width in zip(counts, widths, strict=True)] if density else counts
    return go.Bar(
        x=centres,
        y=values,
        width=widths,
        name=name,
        marker={"color": colour, "line": {"width": 0}},
        opacity=0.55 if density else 0.9,
        customdata=[[low, high, count] for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True)],
        hovertemplate="%{customdata[0]:.4g} – %{customdata[1]:.4g}<br>%{customdata[2]:,} rows<extra>"
        + name
        + "</extra>",
    )


def _category_items(profile: dict[str, Any]) -> list[tuple[str, int]]:
    items = [(str(item["value"]), item["count"]) for item in profile.get("top", [])]
    if profile.get("other_count"):
        items.append(("(other)", profile["other_count"]))
    return items


def column_chart(name: str, profile: dict[str, Any]) -> Chart | None:
    """A histogram for a number column, a bar chart for a categorical or boolean one; None otherwise."""
    kind = profile.get("type")
    if kind in (NUMERIC, INTEGER):
        trace = _histogram_trace(profile.get("histogram", {}), name=name, colour=COLOURS[0], density=False)
        if trace is None:
            return None
        figure = go.Figure(trace, _layout(name, x_title="", y_title="rows"))
        return Chart(column=name, kind="histogram", json=figure_json(figure))
    if kind in (CATEGORICAL, BOOLEAN):
        items = _category_items(profile)
        if not items:
            return None
        bar = go.Bar(
            x=[label for label, _ in items],
            y=[count for _, count in items],
            marker={"color": COLOURS[0]},
            hovertemplate="%{x}<br>%{y:,} rows<extra></extra>",
        )
        figure = go.Figure(bar, _layout(name, x_title="", y_title="rows"))
        figure.update_xaxes(type="category", tickangle=-30 if len(items) > 6 else 0)
        return Chart(column=name, kind="categories", json=figure_json(figure))
    return None


def compare_chart(name: str, before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str]) -> Chart | None:
    """Both versions' distributions of one column overlaid: densities for numbers, shares of rows for categories.

    Normalised so that versions of different sizes (and numbers with different bins) compare fairly.
    """
    kinds = {before.get("type"), after.get("type")}
    if kinds <= {NUMERIC, INTEGER}:
        traces = [
            _histogram_trace(profile.get("histogram", {}), name=label, colour=colour, density=True)
            for profile, label, colour in zip((before, after), labels, COLOURS, strict=True)
        ]
        traces = [trace for trace in traces if trace is not None]
        if not traces:
            return None
        figure = go.Figure(traces, _layout(name, x_title="", y_title="density", legend=True))
        return Chart(column=name, kind="histogram", json=figure_json(figure))
    if kinds <= {CATEGORICAL, BOOLEAN}:
        items = [dict(_category_items(profile)) for profile in (before, after)]
        order = list(dict.fromkeys([*items[0], *items[1]]))
        traces = []
        for counts, label, colour in zip(items, labels, COLOURS, strict=True):
            total = sum(counts.values()) or 1
            traces.append(
                go.Bar(
                    x=order,
                    y=[counts.get(category, 0) / total for category in order],
                    name=label,
                    marker={"color": colour},
                    hovertemplate="%{x}<br>%{y:.1%}<extra>" + label + "</extra>",
                )
            )
        figure = go.Figure(traces, _layout(name, x_title="", y_title="share of rows", legend=True))
        figure.update_layout(barmode="group")
        figure.update_xaxes(type="category")
        return Chart(column=name, kind="categories", json=figure_json(figure))
    return None
