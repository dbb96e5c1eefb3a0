"""Plotly figures of monitoring, built in Python and drawn by the local plotly.js (as the deployment page).

The seed's `ModelDashboard` helpers live here as functions (`plot_accuracy_trends`, `plot_latency_distribution`,
`plot_error_rates`, and their siblings): each takes what a selector returns and gives back a `go.Figure`, so the
pages and a notebook draw the same charts:

    dashboard = selectors.deployment_dashboard(deployment=deployment, window="24h")
    charts.plot_latency_distribution(dashboard.versions).show()
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from apps.deployments.charts import figure_json
from apps.monitoring.models import DriftReport
from apps.monitoring.selectors import VersionSeries
from apps.telemetry.models import LATENCY_BUCKETS_MS
from apps.telemetry.selectors import PredictionDistribution, TrendPoint

__all__ = [
    "drift_share_figure",
    "figure_json",
    "histogram_figure",
    "latency_bucket_labels",
    "plot_accuracy_trends",
    "plot_drift_by_column",
    "plot_error_rates",
    "plot_latency_distribution",
    "plot_latency_quantiles",
    "plot_prediction_distribution",
    "plot_throughput",
]

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


# One colour per version, in the order the dashboard lists them (live versions first, then shadows).
PALETTE = ("#1f6feb", "#e8590c", "#2f9e44", "#845ef7", "#0c8599", "#e03131", "#f08c00", "#868e96")
PSI_SCALE_MAX = 0.25
QUANTILE_DASHES = {"p50_ms": "solid", "p90_ms": "dash", "p99_ms": "dot"}


@functools.cache
def _template() -> dict[str, Any]:
    return pio.templates[LAYOUT["template"]].to_plotly_json()


def _figure(traces: list[dict[str, Any]], **layout: Any) -> go.Figure:
    """A figure from plain trace and layout dicts, without plotly's per-property validation.

    Validation costs 50-100 ms per figure, most of a dashboard request's budget; these figures are built here
    from known properties (and the tests draw them in Chromium), so it is skipped. The template is expanded
    once, as validation would have done, since plotly.js does not know templates by name."""
    return go.Figure({"data": traces, "layout": {**LAYOUT, **layout, "template": _template()}}, _validate=False)


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _time_figure(
    traces: list[dict[str, Any]], since: datetime | None, until: datetime | None, **layout: Any
) -> go.Figure:
    xaxis: dict[str, Any] = {"type": "date"}
    if since is not None and until is not None:
        xaxis["range"] = [since, until]
    return _figure(traces, xaxis=xaxis, legend={"orientation": "h"}, **layout)


def plot_throughput(
    versions: Sequence[VersionSeries],
    step: timedelta,
    since: datetime | None = None,
    until: datetime | None = None,
) -> go.Figure:
    """Requests per minute of each version (live and shadow apart) per step of the time axis, stacked."""
    minutes = step.total_seconds() / 60
    traces = [
        {
            "type": "bar",
            "x": [point.start for point in series.points],
            "y": [point.requests / minutes for point in series.points],
            "name": series.label,
            "marker": {"color": _colour(index)},
            "customdata": [point.requests for point in series.points],
            "hovertemplate": "%{x}: %{y:.3g}/min (%{customdata} requests)",
        }
        for index, series in enumerate(versions)
    ]
    return _time_figure(traces, since, until, barmode="stack", yaxis={"title": {"text": "requests/min"}})


def plot_error_rates(
    versions: Sequence[VersionSeries], since: datetime | None = None, until: datetime | None = None
) -> go.Figure:
    """The share of 5xx answers of each version per step (steps without requests are gaps, not zeros)."""
    traces = [
        {
            "type": "scatter",
            "x": [point.start for point in series.points],
            "y": [point.error_rate for point in series.points],
            "name": series.label,
            "mode": "lines+markers",
            "line": {"color": _colour(index)},
            "customdata": [[point.errors, point.requests] for point in series.points],
            "hovertemplate": "%{x}: %{y:.2%} (%{customdata[0]} of %{customdata[1]})",
        }
        for index, series in enumerate(versions)
    ]
    yaxis = {"title": {"text": "errors"}, "tickformat": ".1%", "rangemode": "tozero"}
    return _time_figure(traces, since, until, yaxis=yaxis)


def plot_latency_quantiles(
    versions: Sequence[VersionSeries], since: datetime | None = None, until: datetime | None = None
) -> go.Figure:
    """p50, p90 and p99 latency (ms) of each version per step; a colour per version, a dash per quantile."""
    traces = [
        {
            "type": "scatter",
            "x": [point.start for point in series.points],
            "y": [getattr(point, key) for point in series.points],
            "name": f"{series.label} {key.removesuffix('_ms')}",
            "mode": "lines",
            "line": {"color": _colour(index), "dash": dash},
            "hovertemplate": "%{x}: %{y:.3g} ms",
        }
        for index, series in enumerate(versions)
        for key, dash in QUANTILE_DASHES.items()
    ]
    return _time_figure(traces, since, until, yaxis={"title": {"text": "ms"}, "rangemode": "tozero"})


def latency_bucket_labels() -> list[str]:
    """The rollups' latency buckets as people read them: "≤ 1 ms" … "> 10000 ms"."""
    return [f"≤ {bound:g} ms" for bound in LATENCY_BUCKETS_MS] + [f"> {LATENCY_BUCKETS_MS[-1]:g} ms"]


def plot_latency_distribution(versions: Sequence[VersionSeries]) -> go.Figure:
    """The window's latency histogram of each version, side by side: the share of its requests per bucket."""
    labels = latency_bucket_labels()
    traces = [
        {
            "type": "bar",
            "x": labels,
            "y": _shares(list(series.totals.buckets)),
            "name": f"{series.label} ({sum(series.totals.buckets)})",
            "marker": {"color": _colour(index)},
            "customdata": list(series.totals.buckets),
            "hovertemplate": "%{x}: %{y:.1%} (%{customdata})",
        }
        for index, series in enumerate(versions)
    ]
    return _figure(
        traces,
        barmode="group",
        yaxis={"tickformat": ".0%", "rangemode": "tozero"},
        xaxis={"type": "category"},
        legend={"orientation": "h"},
    )


def plot_accuracy_trends(
    trend: Sequence[TrendPoint],
    labels: dict[tuple[int | None, bool], str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> go.Figure:
    """Realised accuracy (classifiers) or MAE (regression) of each version per step, from its labelled
    predictions; the hover shows how many labelled rows are behind each point."""
    labels = labels or {}
    lines: dict[tuple[int | None, bool, str], list[TrendPoint]] = {}
    for point in trend:
        lines.setdefault((point.model_version_id, point.shadow, point.metric), []).append(point)
    traces = [
        {
            "type": "scatter",
            "x": [point.start for point in points],
            "y": [point.value for point in points],
            "name": f"{labels.get((version_id, shadow), f'version id {version_id}')} {metric}",
            "mode": "lines+markers",
            "line": {"color": _colour(index)},
            "customdata": [point.n for point in points],
            "hovertemplate": "%{x}: %{y:.3g} (%{customdata} labelled rows)",
        }
        for index, ((version_id, shadow, metric), points) in enumerate(lines.items())
    ]
    metrics = {metric for _, _, metric in lines}
    yaxis: dict[str, Any] = {"rangemode": "tozero"}
    if metrics == {"accuracy"}:
        yaxis = {"range": [0, 1.05], "tickformat": ".0%", "title": {"text": "accuracy"}}
    elif metrics == {"mae"}:
        yaxis["title"] = {"text": "MAE"}
    return _time_figure(traces, since, until, yaxis=yaxis)


def plot_prediction_distribution(
    distribution: PredictionDistribution, since: datetime | None = None, until: datetime | None = None
) -> go.Figure:
    """What the live versions predicted per step: each class's share (stacked), or p10/p50/p90 of the values."""
    steps = distribution.steps
    if distribution.kind == "classes":
        totals = [sum(counts[index] for counts in distribution.classes.values()) for index in range(len(steps))]
        traces = [
            {
                "type": "bar",
                "x": steps,
                "y": [count / total if total else 0.0 for count, total in zip(counts, totals, strict=True)],
                "name": name,
                "marker": {"color": _colour(index)},
                "customdata": counts,
                "hovertemplate": "%{x}: %{y:.1%} (%{customdata})",
            }
            for index, (name, counts) in enumerate(distribution.classes.items())
        ]
        return _time_figure(traces, since, until, barmode="stack", yaxis={"tickformat": ".0%", "range": [0, 1]})
    traces = [
        {"type": "scatter", "x": steps, "y": values, "name": name, "mode": "lines+markers", "line": {"dash": dash}}
        for (name, values), dash in zip(distribution.quantiles.items(), ("dot", "solid", "dot"), strict=False)
    ]
    return _time_figure(traces, since, until, yaxis={"title": {"text": "predicted value"}})


def plot_drift_by_column(history: Sequence[DriftReport]) -> go.Figure:
    """PSI of each column per drift report (a heatmap over time): PSI is computed for every column whatever its
    test, so columns compare; the hover gives the column's own test, statistic and verdict."""
    columns = sorted({column["column"] for report in history for column in (report.result or {}).get("columns", [])})
    z, text = [], []
    for name in columns:
        row, notes = [], []
        for report in history:
            found = next((c for c in (report.result or {}).get("columns", []) if c["column"] == name), None)
            row.append(found.get("psi") if found else None)
            verdict = "–" if not found or found.get("drifted") is None else ("drifted" if found["drifted"] else "no")
            notes.append(f"{found.get('test') or '–'} {verdict}" if found else "not in report")
        z.append(row)
        text.append(notes)
    values = [value for row in z for value in row if value is not None]
    heatmap = {
        "type": "heatmap",
        # Reports as categories: a date axis would zoom to milliseconds around a single report.
        "x": [f"#{report.pk} {report.window_end:%m-%d %H:%M}" for report in history],
        "y": columns,
        "z": z,
        "text": text,
        "colorscale": [[0, "#fff5eb"], [0.4, "#fd8d3c"], [1, "#a50f15"]],
        # From no drift to at least PSI 0.25, the usual "significant shift" mark, so a calm column stays pale.
        "zmin": 0,
        "zmax": max([PSI_SCALE_MAX, *values]),
        "colorbar": {"title": {"text": "PSI"}},
        "hovertemplate": "%{y} in report %{x}: PSI %{z:.3g}, %{text}<extra></extra>",
    }
    return _figure([heatmap], xaxis={"type": "category"}, height=max(220, 40 + 22 * len(columns)))
