"""The seed's charts as Plotly figures, built from what the API returns (the SDK's typed results):

- `plot_pipeline_dag(run)`, `plot_execution_timeline(run)`, `plot_resource_usage(run)`: a `PipelineRun`'s
  stages (status, start and end, CPU seconds and peak memory the worker measured).
- `plot_accuracy_trends(performances)`: `Performance` snapshots (`check_model_performance` called over time):
  realised accuracy per model version, with the label-free estimate dotted.
- `plot_latency_distribution(deployment)`, `plot_error_rates(deployment)`: the canary analysis' windows
  (`Deployment.decisions`: per window, requests, errors, p50 and p99 latency of the stable and the canary
  version), the latency and error figures the deployments API exposes today.

Each returns a `plotly.graph_objects.Figure`; `fig.show()` in a notebook, `fig.write_html(…)` elsewhere.
`PipelineVisualizer` and `ModelDashboard` hold the same charts as methods, as in the seed, and also take ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from mlops_sdk.client import Client
from mlops_sdk.deployment import DeploymentStatus
from mlops_sdk.types import Deployment, Performance, PipelineRun, parse_time

STATUS_COLOURS = {
    "succeeded": "#198754",
    "running": "#0d6efd",
    "queued": "#adb5bd",
    "pending": "#adb5bd",
    "waiting": "#6f42c1",
    "skipped": "#dee2e6",
    "failed": "#dc3545",
    "cancelled": "#343a40",
}
SIDES = ("stable", "canary")


def _layout(fig: go.Figure, title: str, **axes: Any) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50}, **axes)
    return fig


def plot_pipeline_dag(pipeline_run: PipelineRun) -> go.Figure:
    """The stages as a chain of nodes, coloured by status (the console's pipelines are linear)."""
    stages = sorted(pipeline_run.stages, key=lambda stage: stage.position)
    xs = list(range(len(stages)))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[0] * len(xs), mode="lines", line={"color": "#adb5bd"}, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[0] * len(xs),
            mode="markers+text",
            text=[stage.name for stage in stages],
            textposition="top center",
            marker={"size": 28, "color": [STATUS_COLOURS.get(stage.status, "#adb5bd") for stage in stages]},
            customdata=[[stage.status, stage.error or ""] for stage in stages],
            hovertemplate="%{text}: %{customdata[0]}<br>%{customdata[1]}<extra></extra>",
        )
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, range=[-1, 1])
    return _layout(fig, f"Pipeline run {pipeline_run.id}: {pipeline_run.status}", showlegend=False)


def plot_execution_timeline(pipeline_run: PipelineRun) -> go.Figure:
    """A Gantt chart of the stages that ran: one bar per stage from its start to its end (or now)."""
    now = datetime.now(tz=pipeline_run.created_at.tzinfo if pipeline_run.created_at else None)
    ran = [stage for stage in sorted(pipeline_run.stages, key=lambda s: s.position) if stage.started_at]
    fig = go.Figure()
    for stage in ran:
        end = stage.ended_at or now
        fig.add_trace(
            go.Bar(
                y=[stage.name],
                x=[(end - stage.started_at).total_seconds() * 1000],
                base=[stage.started_at.isoformat()],
                orientation="h",
                name=stage.name,
                marker={"color": STATUS_COLOURS.get(stage.status, "#adb5bd")},
                hovertemplate=f"{stage.name}: {stage.status}, {(end - stage.started_at).total_seconds():.2f} s"
                "<extra></extra>",
            )
        )
    fig.update_xaxes(type="date", title="time")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Pipeline run {pipeline_run.id}: execution timeline", showlegend=False)


def plot_resource_usage(pipeline_run: PipelineRun) -> go.Figure:
    """CPU seconds and peak memory (MiB) per stage, as the worker measured them."""
    stages = [stage for stage in sorted(pipeline_run.stages, key=lambda s: s.position) if stage.started_at]
    names = [stage.name for stage in stages]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[stage.cpu_seconds or 0 for stage in stages], name="CPU seconds"))
    fig.add_trace(
        go.Bar(
            x=names,
            y=[(stage.peak_rss_bytes or 0) / 2**20 for stage in stages],
            name="peak memory (MiB)",
            yaxis="y2",
        )
    )
    return _layout(
        fig,
        f"Pipeline run {pipeline_run.id}: resource usage",
        barmode="group",
        yaxis={"title": "CPU seconds"},
        yaxis2={"title": "MiB", "overlaying": "y", "side": "right"},
    )


def plot_accuracy_trends(performances: Performance | Iterable[Performance], metric: str = "accuracy") -> go.Figure:
    """Realised `metric` per model version at the end of each window (solid), and the estimate (dotted)."""
    snapshots = [performances] if isinstance(performances, Performance) else list(performances)
    series: dict[tuple[Any, str], list[tuple[datetime, float]]] = {}
    for snapshot in snapshots:
        for version in snapshot.versions:
            key = version.model_version_id
            realised = (version.realised or {}).get(metric)
            estimated = (version.estimate or {}).get(metric)
            if realised is not None:
                series.setdefault((key, "realised"), []).append((snapshot.until, realised))
            if estimated is not None:
                series.setdefault((key, "estimate"), []).append((snapshot.until, estimated))
    fig = go.Figure()
    for (version_id, kind), points in sorted(series.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        points.sort()
        fig.add_trace(
            go.Scatter(
                x=[moment for moment, _ in points],
                y=[value for _, value in points],
                mode="lines+markers",
                name=f"version id {version_id} ({kind})",
                line={"dash": "dot" if kind == "estimate" else "solid"},
            )
        )
    fig.update_yaxes(title=metric, rangemode="tozero")
    return _layout(fig, f"{metric.replace('_', ' ').capitalize()} per model version")


def _deployment(source: Deployment | DeploymentStatus) -> Deployment:
    return source.deployment if isinstance(source, DeploymentStatus) else source


def _windows(source: Deployment | DeploymentStatus) -> list[dict[str, Any]]:
    """The analysed windows (decisions that carry numbers), oldest first."""
    return [decision for decision in _deployment(source).decisions if (decision.get("numbers") or {}).get("stable")]


def plot_latency_distribution(source: Deployment | DeploymentStatus) -> go.Figure:
    """Per analysed window, the p50 and p99 latency (ms) of the stable and the canary version."""
    windows = _windows(source)
    fig = go.Figure()
    for side in SIDES:
        for quantile in ("p50_ms", "p99_ms"):
            fig.add_trace(
                go.Bar(
                    x=[f"{window.get('percent')}% @ {window.get('at', '')[:19]}" for window in windows],
                    y=[((window["numbers"].get(side) or {}).get(quantile)) for window in windows],
                    name=f"{side} {quantile.removesuffix('_ms')}",
                )
            )
    fig.update_yaxes(title="latency (ms)")
    return _layout(fig, f"{_deployment(source).name}: latency per analysis window", barmode="group")


def plot_error_rates(source: Deployment | DeploymentStatus) -> go.Figure:
    """The error rate (5xx / requests) of the stable and the canary version in each analysed window."""
    windows = _windows(source)
    fig = go.Figure()
    for side in SIDES:
        fig.add_trace(
            go.Scatter(
                x=[parse_time(window.get("at")) for window in windows],
                y=[window["numbers"].get(f"{side}_error_rate") for window in windows],
                mode="lines+markers",
                name=side,
            )
        )
    fig.update_yaxes(title="error rate", tickformat=".1%", rangemode="tozero")
    return _layout(fig, f"{_deployment(source).name}: error rate per analysis window")


class PipelineVisualizer:
    """The seed's `PipelineVisualizer`: the pipeline charts for a `PipelineRun` or a pipeline run's id."""

    def __init__(self, *, client: Client | None = None) -> None:
        self._client = client

    def _run(self, pipeline_run: PipelineRun | int) -> PipelineRun:
        if isinstance(pipeline_run, PipelineRun):
            return pipeline_run
        return PipelineRun.from_api(Client.default(self._client).get(f"/pipeline-runs/{pipeline_run}/"))

    def plot_pipeline_dag(self, pipeline_run: PipelineRun | int) -> go.Figure:
        return plot_pipeline_dag(self._run(pipeline_run))

    def plot_execution_timeline(self, pipeline_run: PipelineRun | int) -> go.Figure:
        return plot_execution_timeline(self._run(pipeline_run))

    def plot_resource_usage(self, pipeline_run: PipelineRun | int) -> go.Figure:
        return plot_resource_usage(self._run(pipeline_run))


class ModelDashboard:
    """The seed's `ModelDashboard`: the model charts for typed results, or a deployment's id (read now)."""

    def __init__(self, *, client: Client | None = None) -> None:
        self._client = client

    def _deployment(self, source: Deployment | DeploymentStatus | int) -> Deployment | DeploymentStatus:
        if isinstance(source, int):
            return Deployment.from_api(Client.default(self._client).get(f"/deployments/{source}/"))
        return source

    def plot_accuracy_trends(
        self, performance_data: Performance | Iterable[Performance] | int, window: str = "24h"
    ) -> go.Figure:
        if isinstance(performance_data, int):
            data = Client.default(self._client).get(f"/deployments/{performance_data}/performance/", window=window)
            performance_data = Performance.from_api(data)
        return plot_accuracy_trends(performance_data)

    def plot_latency_distribution(self, latency_data: Deployment | DeploymentStatus | int) -> go.Figure:
        return plot_latency_distribution(self._deployment(latency_data))

    def plot_error_rates(self, error_data: Deployment | DeploymentStatus | int) -> go.Figure:
        return plot_error_rates(self._deployment(error_data))
