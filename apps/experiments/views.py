"""The experiments pages: experiments and runs, run comparison, pipeline runs and studies."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.artifacts import ArtifactError
from apps.core.choices import ProjectRole
from apps.core.filters import filter_page
from apps.core.models import Project
from apps.core.permissions import has_project_role
from apps.core.services import artifact_verified_path
from apps.core.views import form_errors_from
from apps.experiments import charts, selectors, services
from apps.experiments.choices import RunStatus
from apps.experiments.filters import ExperimentFilterSet, PipelineRunFilterSet, RunFilterSet, StudyFilterSet
from apps.experiments.forms import ExperimentForm, PipelineRunForm
from apps.experiments.models import Experiment, PipelineRun, Run, Study

PAGE_SIZE = 25
LIVE_POLL_SECONDS = 2


def _editable_projects(user: object) -> Any:
    projects = Project.objects.for_user(user)
    if getattr(user, "is_staff", False):
        return projects
    roles = [ProjectRole.EDITOR, ProjectRole.APPROVER, ProjectRole.OWNER]
    return projects.filter(memberships__user=user, memberships__role__in=roles)


def _page(request: HttpRequest, queryset: Any) -> Any:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


# Experiments


@login_required
@require_http_methods(["GET", "POST"])
def experiment_list(request: HttpRequest) -> HttpResponse:
    editable = _editable_projects(request.user)
    form = ExperimentForm(request.POST or None, projects=editable)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                experiment = services.experiment_create(actor=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form_errors_from(exc, form)
            else:
                messages.success(request, f"Experiment {experiment.name} created.")
                return redirect(experiment)
        status = 400
    filterset = ExperimentFilterSet(request.GET, selectors.experiment_list(user=request.user), request=request)
    experiments, filter_status = filter_page(filterset)
    context = {
        "page": _page(request, experiments),
        "filter": filterset,
        "form": form,
        "can_create": editable.exists(),
    }
    return render(
        request, "experiments/experiment_list.html", context, status=status if status != 200 else filter_status
    )


@login_required
@require_GET
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment.objects.for_user(request.user).select_related("project"), pk=pk)
    # The "include HPO trials" box is the page's own parameter: without it, the page lists top-level runs only.
    trials = request.GET.get("trials") == "1"
    runs = selectors.run_list(user=request.user).filter(experiment=experiment)
    if not trials:
        runs = runs.filter(parent__isnull=True)
    filterset = RunFilterSet(request.GET, runs.prefetch_related("children"), request=request, page_params=["trials"])
    runs, status = filter_page(filterset)
    page = _page(request, runs)
    metric_names = sorted({name for run in page.object_list for name in run.metrics})[:8]
    return render(
        request,
        "experiments/experiment_detail.html",
        {
            "experiment": experiment,
            "project": experiment.project,
            "page": page,
            "filter": filterset,
            "trials": trials,
            "metric_names": metric_names,
            "pipelines": selectors.pipeline_run_list(user=request.user, experiment=experiment.pk)[:5],
        },
        status=status,
    )


# Runs


def _visible_run(request: HttpRequest, pk: int) -> Run:
    run = selectors.run_detail(user=request.user, pk=pk)
    if run is None:
        raise Http404("No such run.")
    return run


@login_required
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _visible_run(request, pk)
    series = selectors.metric_series([run.pk]).get(run.pk, {})
    plots = run.plots or {}
    figures = [
        ("Confusion matrix", charts.confusion_matrix(plots.get("confusion_matrix") or {})),
        ("ROC", charts.roc_curves(plots.get("roc") or [])),
        ("Residuals", charts.residuals(plots.get("residuals") or {})),
    ]
    children = run.children.order_by("trial_number", "id")
    return render(
        request,
        "experiments/run_detail.html",
        {
            "run": run,
            "project": run.experiment.project,
            "curves": charts.run_curves(series),
            "figures": [(title, figure) for title, figure in figures if figure],
            "children": children[:100],
            "child_count": children.count(),
            "study_metric": run.studies.values_list("metric", flat=True).first() or "",
            "live_poll": LIVE_POLL_SECONDS,
        },
    )


@login_required
@require_GET
def run_log(request: HttpRequest, pk: int) -> HttpResponse:
    """The run's log, polled by htmx while the run is active."""
    run = get_object_or_404(Run.objects.for_user(request.user).only("id", "status", "log"), pk=pk)
    return render(request, "experiments/_run_log.html", {"run": run, "live_poll": LIVE_POLL_SECONDS})


@login_required
@require_GET
def artifact_download(request: HttpRequest, pk: int, artifact_id: int) -> FileResponse:
    run = get_object_or_404(Run.objects.for_user(request.user).select_related("experiment__project"), pk=pk)
    artifact = get_object_or_404(run.artifacts, pk=artifact_id)
    try:
        path = artifact_verified_path(
            sha256=artifact.sha256, project=run.experiment.project, obj=run, actor=request.user
        )
    except ArtifactError as exc:
        raise Http404(str(exc)) from None
    filename = artifact.name.rsplit("/", 1)[-1]
    return FileResponse(open(path, "rb"), as_attachment=True, filename=filename, content_type=artifact.content_type)


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    ids = [int(value) for value in request.GET.getlist("runs") if value.isdigit()][: selectors.MAX_COMPARE_RUNS]
    runs = list(Run.objects.for_user(request.user).filter(pk__in=ids).select_related("experiment").order_by("id"))
    params = sorted({name for run in runs for name in run.params})
    metrics = sorted({name for run in runs for name in run.metrics})
    best = {}
    for name in metrics:
        values = [run.metrics[name] for run in runs if isinstance(run.metrics.get(name), int | float)]
        if len(set(values)) > 1:
            best[name] = min(values) if charts.lower_is_better(name) else max(values)
    differing = [name for name in params if len({str(run.params.get(name)) for run in runs}) > 1]
    chosen = request.GET.get("metric") or next(
        (name for name in ("accuracy", "roc_auc", "f1", "r2", "rmse") if name in metrics), metrics[0] if metrics else ""
    )
    labels = {run.pk: f"{run.pk} · {run.name or run.algorithm}" for run in runs}
    series = selectors.metric_series([run.pk for run in runs])
    curve_names = sorted({name for by_name in series.values() for name, pts in by_name.items() if len(pts) > 1})
    curve_metric = request.GET.get("curve") or (curve_names[0] if curve_names else "")
    # Parameters that are the same in every run say nothing about the differences: list them apart.
    shown = differing if len(runs) > 1 else params
    same = [name for name in params if name not in shown]
    rows = [
        (
            run,
            [(name, run.params.get(name)) for name in shown],
            [
                (name, run.metrics.get(name), best.get(name) == run.metrics.get(name) and name in best)
                for name in metrics
            ],
        )
        for run in runs
    ]
    return render(
        request,
        "experiments/compare.html",
        {
            "runs": runs,
            "rows": rows,
            "params": shown,
            "same_params": [(name, runs[0].params.get(name)) for name in same],
            "metrics": metrics,
            "metric": chosen,
            "curve_metric": curve_metric,
            "curve_names": curve_names,
            "curves": charts.compare_curves({labels[r]: series.get(r, {}) for r in labels}, curve_metric)
            if curve_metric
            else None,
            "parallel": charts.parallel_coordinates(
                [(run.params, run.metrics.get(chosen)) for run in runs], differing or params[:6], chosen
            )
            if chosen
            else None,
            "ids": ids,
        },
    )


# Pipelines


@login_required
@require_http_methods(["GET", "POST"])
def pipeline_list(request: HttpRequest) -> HttpResponse:
    editable = _editable_projects(request.user)
    form = PipelineRunForm(request.POST or None, projects=editable)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                pipeline_run = services.pipeline_run_create(
                    project=form.cleaned_data["project"],
                    actor=request.user,
                    config_text=form.cleaned_data["config_yaml"],
                    stage=form.cleaned_data["stage"] or None,
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error("config_yaml", [f"{field}: {error}" for error in errors])
            else:
                messages.success(request, f"Pipeline run {pipeline_run.pk} queued.")
                return redirect(pipeline_run)
        status = 400
    filterset = PipelineRunFilterSet(request.GET, selectors.pipeline_run_list(user=request.user), request=request)
    pipeline_runs, filter_status = filter_page(filterset)
    context = {
        "page": _page(request, pipeline_runs),
        "filter": filterset,
        "form": form,
        "can_create": editable.exists(),
    }
    return render(request, "experiments/pipeline_list.html", context, status=status if status != 200 else filter_status)


def _visible_pipeline(request: HttpRequest, pk: int) -> PipelineRun:
    queryset = PipelineRun.objects.for_user(request.user).select_related(
        "project", "experiment", "run", "candidate_run", "dataset_version__dataset"
    )
    return get_object_or_404(queryset, pk=pk)


def _pipeline_context(request: HttpRequest, pipeline_run: PipelineRun) -> dict[str, Any]:
    stages = list(pipeline_run.stages.order_by("position"))
    return {
        "pipeline_run": pipeline_run,
        "project": pipeline_run.project,
        "stages": stages,
        "dag": charts.pipeline_dag(stages),
        "timeline": charts.pipeline_timeline(stages),
        "resources": charts.stage_resources(stages),
        "study": Study.objects.filter(pipeline_run=pipeline_run).first(),
        "can_cancel": not pipeline_run.is_finished
        and has_project_role(request.user, pipeline_run.project, ProjectRole.EDITOR),
        "live_poll": LIVE_POLL_SECONDS,
    }


@login_required
@require_GET
def pipeline_detail(request: HttpRequest, pk: int) -> HttpResponse:
    pipeline_run = _visible_pipeline(request, pk)
    return render(request, "experiments/pipeline_detail.html", _pipeline_context(request, pipeline_run))


@login_required
@require_GET
def pipeline_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The DAG, timeline, resources and stages of a pipeline run, polled by htmx while it is active."""
    pipeline_run = _visible_pipeline(request, pk)
    return render(request, "experiments/_pipeline_live.html", _pipeline_context(request, pipeline_run))


@login_required
@require_POST
def pipeline_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    pipeline_run = _visible_pipeline(request, pk)
    services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=request.user)
    messages.success(request, f"Cancelling pipeline run {pipeline_run.pk}.")
    return redirect(pipeline_run)


# Studies


@login_required
@require_GET
def study_list(request: HttpRequest) -> HttpResponse:
    filterset = StudyFilterSet(request.GET, selectors.study_list(user=request.user), request=request)
    studies, status = filter_page(filterset)
    return render(
        request, "experiments/study_list.html", {"page": _page(request, studies), "filter": filterset}, status=status
    )


@login_required
@require_GET
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(
        Study.objects.for_user(request.user).select_related("project", "experiment", "best_run", "pipeline_run"), pk=pk
    )
    trials = list(study.trial_runs.order_by("trial_number", "trial_slot"))
    history = charts.optimization_history(
        [(t.trial_number, t.metrics.get(study.metric), t.status) for t in trials if t.trial_number is not None],
        study.direction,
        study.metric,
    )
    succeeded = [t for t in trials if t.status == RunStatus.SUCCEEDED]
    params = sorted({name for t in succeeded for name in t.params if name != "algorithm"})
    varying = [name for name in params if len({str(t.params.get(name)) for t in succeeded}) > 1]
    if len({t.algorithm for t in succeeded}) > 1:
        varying = ["algorithm", *varying]
    return render(
        request,
        "experiments/study_detail.html",
        {
            "study": study,
            "project": study.project,
            "trials": trials,
            "history": history,
            "importances": charts.param_importances((study.importances or {}).get("values") or {}),
            "importance_note": (study.importances or {}).get("note", ""),
            "parallel": charts.parallel_coordinates(
                [({**t.params, "algorithm": t.algorithm}, t.metrics.get(study.metric)) for t in succeeded],
                varying[:10],
                study.metric,
            ),
            "live_poll": LIVE_POLL_SECONDS,
        },
    )
