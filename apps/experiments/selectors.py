"""Queries of the experiments app, shared by the HTML pages and the API so both filter the same way."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Prefetch, QuerySet

from apps.experiments.models import Experiment, PipelineRun, PipelineStage, Run, RunMetric, Study

# The most runs a comparison shows, and the most points per metric curve it draws.
MAX_COMPARE_RUNS = 20
MAX_CURVE_POINTS = 2000


def experiment_list(*, user: object, project: str = "") -> QuerySet[Experiment]:
    experiments = Experiment.objects.for_user(user).select_related("project")
    if project:
        experiments = experiments.filter(project__slug=project)
    return experiments.annotate(run_count=Count("runs")).order_by("-created_at", "-id")


def run_list(*, user: object) -> QuerySet[Run]:
    """The runs the user may see, newest first; lists filter them through `RunFilterSet`."""
    runs = Run.objects.for_user(user).select_related("experiment__project", "dataset_version__dataset")
    return runs.order_by("-created_at", "-id")


def run_detail(*, user: object, pk: int) -> Run | None:
    return (
        Run.objects.for_user(user)
        .select_related(
            "experiment__project", "dataset_version__dataset", "dataset_split", "parent", "pipeline_run", "study"
        )
        .prefetch_related("artifacts")
        .filter(pk=pk)
        .first()
    )


def metric_series(run_ids: list[int], names: list[str] | None = None) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """Per run, per metric, the (step, value) points in step order; long series are thinned evenly."""
    points = RunMetric.objects.filter(run_id__in=run_ids)
    if names:
        points = points.filter(name__in=names)
    series: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for run_id, name, step, value in points.order_by("run_id", "name", "step", "id").values_list(
        "run_id", "name", "step", "value"
    ):
        series.setdefault(run_id, {}).setdefault(name, []).append((step, value))
    for by_name in series.values():
        for name, values in by_name.items():
            if len(values) > MAX_CURVE_POINTS:
                stride = len(values) / MAX_CURVE_POINTS
                by_name[name] = [values[int(i * stride)] for i in range(MAX_CURVE_POINTS)] + [values[-1]]
    return series


def pipeline_run_list(*, user: object, project: str = "", experiment: Any = None) -> QuerySet:
    runs = PipelineRun.objects.for_user(user).select_related("project", "experiment", "dataset_version__dataset", "run")
    if project:
        runs = runs.filter(project__slug=project)
    if experiment:
        runs = runs.filter(experiment_id=experiment)
    stages = PipelineStage.objects.order_by("position")
    return runs.prefetch_related(Prefetch("stages", queryset=stages)).order_by("-created_at", "-id")


def study_list(*, user: object) -> QuerySet[Study]:
    studies = Study.objects.for_user(user).select_related("project", "experiment", "best_run", "pipeline_run")
    return studies.annotate(trial_count=Count("trial_runs")).order_by("-created_at", "-id")
