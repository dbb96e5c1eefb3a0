"""Plotly figures of runs, pipelines and studies, built in Python and drawn by the local plotly.js.

Every function takes plain data from selectors or model rows and returns the figure as JSON that is
safe to embed in a <script type="application/json"> element.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from django.utils.safestring import SafeString

from apps.datasets.charts import figure_json
from apps.experiments.choices import PipelineStageStatus
from worker.training.evaluate import LOWER_IS_BETTER

PALETTE = ("#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e03131", "#5c940d", "#6741d9")
SERIES_PREFIXES = ("train_", "test_", "val_", "eval_", "validation_")


def _layout(title: str, *, height: int = 300, x_title: str = "", y_title: str = "", legend: bool = True) -> dict:
    return {
        "title": {"text": title, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "template": "plotly_white",
        "height": height,
        "margin": {"l": 52, "r": 16, "t": 40, "b": 44},
        "xaxis": {"title": {"text": x_title, "font": {"size": 11}}, "automargin": True},
        "yaxis": {"title": {"text": y_title, "font": {"size": 11}}, "automargin": True},
        "showlegend": legend,
        "legend": {"orientation": "h", "y": -0.25, "font": {"size": 11}},
    }


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of a metric are better (losses, errors, durations)."""
    name = metric.lower()
    base = name
    for prefix in SERIES_PREFIXES:
        base = base.removeprefix(prefix)
    return (
        base in LOWER_IS_BETTER
        or any(word in base for word in ("loss", "error", "rmse", "mae", "mse", "logloss"))
        or name.endswith("_seconds")
    )


def _series_group(name: str) -> str:
    for prefix in SERIES_PREFIXES:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def run_curves(series: Mapping[str, Sequence[tuple[int, float]]]) -> list[tuple[str, SafeString]]:
    """Learning curves of one run: series with more than one step, train/test/val of a metric together."""
    groups: dict[str, list[str]] = {}
    for name, points in sorted(series.items()):
        if len(points) > 1:
            groups.setdefault(_series_group(name), []).append(name)
    figures = []
    for group, names in groups.items():
        figure = go.Figure(layout=_layout(group, x_title="step", y_title=group))
        for index, name in enumerate(names):
            steps, values = zip(*series[name], strict=True)
            figure.add_trace(
                go.Scatter(
                    x=list(steps),
                    y=list(values),
                    mode="lines",
                    name=name,
                    line={"color": PALETTE[index % len(PALETTE)]},
                )
            )
        figures.append((group, figure_json(figure)))
    return figures


def compare_curves(
    series_by_run: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], metric: str
) -> SafeString | None:
    """One metric's curve per run, for the comparison page."""
    figure = go.Figure(layout=_layout(f"{metric} by step", x_title="step", y_title=metric))
    drawn = 0
    for index, (label, series) in enumerate(series_by_run.items()):
        points = series.get(metric) or []
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        mode = "lines" if len(points) > 1 else "markers"
        colour = PALETTE[index % len(PALETTE)]
        figure.add_trace(go.Scatter(x=list(steps), y=list(values), mode=mode, name=label, line={"color": colour}))
        drawn += 1
    return figure_json(figure) if drawn else None


def _axis(label: str, values: list[Any]) -> dict[str, Any]:
    """A parallel-coordinates dimension; strings and mixed values become categories."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None)
    if numeric and any(v is not None for v in values):
        return {"label": label, "values": [v if v is not None else float("nan") for v in values]}
    categories = sorted({str(v) for v in values}, key=str)
    codes = {category: index for index, category in enumerate(categories)}
    return {
        "label": label,
        "values": [codes[str(v)] for v in values],
        "tickvals": list(range(len(categories))),
        "ticktext": categories,
    }


def parallel_coordinates(
    rows: Iterable[tuple[Mapping[str, Any], float | None]], params: Sequence[str], metric: str, *, title: str = ""
) -> SafeString | None:
    """Parameters against a metric, one line per run (or trial) coloured by the metric."""
    rows = [(p, value) for p, value in rows if value is not None]
    if len(rows) < 2 or not params:
        return None
    dimensions = [_axis(name, [p.get(name) for p, _ in rows]) for name in params]
    values = [value for _, value in rows]
    dimensions.append({"label": metric, "values": values})
    scale = "Viridis_r" if lower_is_better(metric) else "Viridis"
    figure = go.Figure(
        go.Parcoords(
            line={"color": values, "colorscale": scale, "showscale": True, "colorbar": {"title": {"text": metric}}},
            dimensions=dimensions,
        ),
        layout=_layout(title or f"Parameters against {metric}", height=360, legend=False),
    )
    figure.update_layout(margin={"l": 60, "r": 60, "t": 60, "b": 30})
    return figure_json(figure)


def _stage_hover(stage: Any) -> str:
    parts = [f"<b>{stage.name}</b>", f"status: {stage.status}"]
    if stage.duration_seconds is not None:
        parts.append(f"duration: {stage.duration_seconds:.2f} s")
    if stage.error:
        parts.append(stage.error[:120])
    return "<br>".join(parts)


def pipeline_dag(stages: Sequence[Any]) -> SafeString:
    """The stages as a left-to-right graph, each node coloured by its status."""
    xs = list(range(len(stages)))
    colours = [PipelineStageStatus.hex(stage.status) for stage in stages]
    figure = go.Figure(layout=_layout("Pipeline", height=200, legend=False))
    figure.add_trace(
        go.Scatter(x=xs, y=[0] * len(xs), mode="lines", line={"color": "#adb5bd", "width": 2}, hoverinfo="skip")
    )
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=[0] * len(xs),
            mode="markers+text",
            marker={"size": 34, "color": colours, "line": {"color": "#343a40", "width": 1}, "symbol": "circle"},
            text=[stage.name for stage in stages],
            textposition="bottom center",
            hovertext=[_stage_hover(stage) for stage in stages],
            hoverinfo="text",
            customdata=[stage.status for stage in stages],
        )
    )
    for x in xs[:-1]:
        figure.add_annotation(
            x=x + 0.72,
            y=0,
            ax=x + 0.28,
            ay=0,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.2,
            arrowwidth=1.5,
            arrowcolor="#6c757d",
        )
    figure.update_xaxes(visible=False, range=[-0.6, len(xs) - 0.4])
    figure.update_yaxes(visible=False, range=[-1, 0.6])
    figure.update_layout(margin={"l": 10, "r": 10, "t": 36, "b": 10})
    return figure_json(figure)


def pipeline_timeline(stages: Sequence[Any]) -> SafeString | None:
    """A Gantt chart of the stages that ran: bars from start to end, in seconds since the first start."""
    ran = [stage for stage in stages if stage.started_at]
    if not ran:
        return None
    origin = min(stage.started_at for stage in ran)
    figure = go.Figure(layout=_layout("Execution timeline", height=80 + 34 * len(ran), x_title="seconds", legend=False))
    for stage in ran:
        start = (stage.started_at - origin).total_seconds()
        end = (stage.ended_at - origin).total_seconds() if stage.ended_at else start + (stage.duration_seconds or 0)
        figure.add_trace(
            go.Bar(
                y=[stage.name],
                x=[max(end - start, 0.001)],
                base=[start],
                orientation="h",
                marker={"color": PipelineStageStatus.hex(stage.status)},
                hovertemplate=f"{stage.name}: %{{base:.2f}} s → %{{x:.2f}} s long<extra>{stage.status}</extra>",
            )
        )
    figure.update_yaxes(autorange="reversed")
    return figure_json(figure)


def stage_resources(stages: Sequence[Any]) -> SafeString | None:
    """Peak memory and CPU time against wall time, per stage that ran."""
    ran = [stage for stage in stages if stage.cpu_seconds is not None or stage.peak_rss_bytes]
    if not ran:
        return None
    names = [stage.name for stage in ran]
    figure = go.Figure(layout=_layout("Resources per stage", height=300))
    figure.add_trace(
        go.Bar(
            x=names,
            y=[(stage.peak_rss_bytes or 0) / 2**20 for stage in ran],
            name="peak RSS (MiB)",
            marker={"color": PALETTE[0]},
            yaxis="y",
            offsetgroup="memory",
        )
    )
    figure.add_trace(
        go.Bar(
            x=names,
            y=[stage.cpu_seconds or 0 for stage in ran],
            name="CPU s",
            marker={"color": PALETTE[1]},
            yaxis="y2",
            offsetgroup="cpu",
        )
    )
    figure.add_trace(
        go.Bar(
            x=names,
            y=[stage.duration_seconds or 0 for stage in ran],
            name="wall s",
            marker={"color": PALETTE[2]},
            yaxis="y2",
            offsetgroup="wall",
        )
    )
    figure.update_layout(
        barmode="group",
        yaxis={"title": {"text": "MiB"}},
        yaxis2={"title": {"text": "seconds"}, "overlaying": "y", "side": "right", "showgrid": False},
    )
    return figure_json(figure)


def confusion_matrix(plot: Mapping[str, Any]) -> SafeString | None:
    labels = [str(label) for label in plot.get("labels", [])]
    matrix = plot.get("matrix") or []
    if not labels or not matrix:
        return None
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=labels,
            y=labels,
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        ),
        layout=_layout("Confusion matrix", height=320, x_title="predicted", y_title="true", legend=False),
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(type="category")
    return figure_json(figure)


def roc_curves(curves: Sequence[Mapping[str, Any]]) -> SafeString | None:
    if not curves:
        return None
    figure = go.Figure(layout=_layout("ROC", height=320, x_title="false positive rate", y_title="true positive rate"))
    figure.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#adb5bd"}, showlegend=False)
    )
    for index, curve in enumerate(curves):
        auc = curve.get("auc")
        name = f"{curve.get('label')}" + (f" (AUC {auc:.3f})" if auc is not None else "")
        figure.add_trace(
            go.Scatter(
                x=curve["fpr"], y=curve["tpr"], mode="lines", name=name, line={"color": PALETTE[index % len(PALETTE)]}
            )
        )
    return figure_json(figure)


def residuals(plot: Mapping[str, Any]) -> SafeString | None:
    if not plot.get("predicted"):
        return None
    figure = go.Figure(
        go.Scatter(
            x=plot["predicted"],
            y=plot["residual"],
            mode="markers",
            marker={"size": 5, "color": PALETTE[0], "opacity": 0.6},
            hovertemplate="predicted %{x:.4g}<br>residual %{y:.4g}<extra></extra>",
        ),
        layout=_layout("Residuals", height=320, x_title="predicted", y_title="actual − predicted", legend=False),
    )
    figure.add_hline(y=0, line={"color": "#adb5bd", "dash": "dot"})
    return figure_json(figure)


def optimization_history(
    trials: Sequence[tuple[int, float | None, str]], direction: str, metric: str
) -> SafeString | None:
    """Each trial's value (by Optuna trial number) and the best value so far."""
    done = sorted((number, value) for number, value, state in trials if value is not None and state == "succeeded")
    if not done:
        return None
    best: list[float] = []
    for _, value in done:
        if not best:
            best.append(value)
        else:
            best.append(max(best[-1], value) if direction == "maximize" else min(best[-1], value))
    numbers = [number for number, _ in done]
    figure = go.Figure(layout=_layout("Optimisation history", x_title="trial", y_title=metric))
    figure.add_trace(
        go.Scatter(x=numbers, y=[v for _, v in done], mode="markers", name="trial", marker={"color": PALETTE[0]})
    )
    figure.add_trace(go.Scatter(x=numbers, y=best, mode="lines", name="best so far", line={"color": PALETTE[1]}))
    return figure_json(figure)


def param_importances(values: Mapping[str, float]) -> SafeString | None:
    if not values:
        return None
    ordered = sorted(values.items(), key=lambda item: item[1])
    figure = go.Figure(
        go.Bar(
            x=[v for _, v in ordered],
            y=[k for k, _ in ordered],
            orientation="h",
            marker={"color": PALETTE[2]},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ),
        layout=_layout("Parameter importances", height=80 + 28 * len(ordered), x_title="importance", legend=False),
    )
    return figure_json(figure)
