"""The monitoring pages: a deployment's dashboard (live), the drift reports (list, a report with its per-column
table, reference-vs-current histograms and the deployment's drift share over time) and running a report from a
page. Thin: the run goes through the service, which checks the role; outsiders get 404, viewers read, editors run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.cache import get_conditional_response
from django.utils.http import quote_etag, urlencode
from django.views.decorators.http import require_GET, require_POST

from apps.core.choices import JobStatus, ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.filters import filter_page
from apps.core.permissions import has_project_role
from apps.deployments.filters import DeploymentFilterSet
from apps.deployments.models import Deployment
from apps.monitoring import charts, selectors, services
from apps.monitoring.filters import DriftReportFilterSet
from apps.telemetry import selectors as telemetry

PAGE_SIZE = 25
# What the run form offers; the API takes any window (and explicit ranges).
WINDOW_CHOICES = ("1h", "24h", "7d")


@login_required
@require_GET
def report_list(request: HttpRequest) -> HttpResponse:
    filterset = DriftReportFilterSet(
        request.GET, selectors.drift_reports(user=request.user).defer("result", "histograms"), request=request
    )
    reports, status = filter_page(filterset)
    page = Paginator(reports, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "monitoring/report_list.html", {"page": page, "filter": filterset}, status=status)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _row(column: dict) -> dict:
    """A column of the engine's report, its numbers formatted for the table (p-values can be 1e-30)."""
    return {
        **column,
        "statistic_text": _number(column["statistic"]),
        "threshold_text": _number(column["threshold"]),
        "psi_text": _number(column["psi"]),
        "missing_reference_text": _share(column["missing_share_reference"]),
        "missing_current_text": _share(column["missing_share_current"]),
    }


@login_required
@require_GET
def report_detail(request: HttpRequest, pk: int) -> HttpResponse:
    report = get_object_or_404(selectors.drift_reports(user=request.user), pk=pk)
    columns = [_row(column) for column in report.result.get("columns", [])]
    histograms = [
        {
            "column": column["column"],
            "figure": charts.figure_json(charts.histogram_figure(report.histograms[column["column"]])),
        }
        for column in columns
        if column["column"] in report.histograms
    ]
    history = selectors.drift_history(deployment=report.deployment)
    threshold = report.result.get("drift_share_threshold", 0.5)
    context = {
        "report": report,
        "columns": columns,
        "histograms": histograms,
        "share_figure": charts.figure_json(charts.drift_share_figure(history, threshold)) if history else None,
        "finished": report.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED),
        "can_edit": has_project_role(request.user, report.deployment.project, ProjectRole.EDITOR),
        "windows": WINDOW_CHOICES,
    }
    return render(request, "monitoring/report_detail.html", context)


@login_required
@require_POST
def report_run(request: HttpRequest, deployment_pk: int) -> HttpResponse:
    """Run a report of the chosen window now (queued); a refusal returns to the page it came from with the message."""
    deployment = get_object_or_404(
        Deployment.objects.for_user(request.user).select_related("project"), pk=deployment_pk
    )
    window = request.POST.get("window", "")
    if window not in WINDOW_CHOICES:
        raise ValidationError(f"Choose a window among {', '.join(WINDOW_CHOICES)}.", field="window")
    report = services.drift_report_run(deployment=deployment, actor=request.user, window=services.parse_window(window))
    return redirect(report)


# How often an open dashboard asks for new figures (the rollups change at most once a minute per step).
DASHBOARD_POLL_SECONDS = 10


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _visible_deployment(request: HttpRequest, pk: int) -> Deployment:
    queryset = Deployment.objects.for_user(request.user).select_related("project", "registered_model")
    return get_object_or_404(queryset, pk=pk)


def _dashboard_context(request: HttpRequest, deployment: Deployment) -> dict[str, Any]:
    """The dashboard's figures and summary rows, its sections rendered once, and their ETag."""
    window = selectors.dashboard_window(request.GET.get("window"))
    version = selectors.dashboard_version(deployment, request.GET.get("version"))
    dashboard = selectors.deployment_dashboard(deployment=deployment, window=window, version=version)
    versions = dashboard.versions
    rows = [
        {
            "label": series.label,
            "shadow": series.shadow,
            "requests": series.totals.requests,
            "throughput": f"{series.throughput_rps:.3g}",
            "error_rate": _share(series.totals.error_rate),
            "p50": _ms(series.totals.p50_ms),
            "p90": _ms(series.totals.p90_ms),
            "p99": _ms(series.totals.p99_ms),
            "mean": _ms(series.totals.mean_ms),
        }
        for series in versions
    ]
    span = {"since": dashboard.since, "until": dashboard.until}
    figures = (
        {}
        if dashboard.empty
        else {
            "throughput": charts.figure_json(charts.plot_throughput(versions, dashboard.step, **span)),
            "errors": charts.figure_json(charts.plot_error_rates(versions, **span)),
            "latency": charts.figure_json(charts.plot_latency_quantiles(versions, **span)),
            "distribution": charts.figure_json(charts.plot_latency_distribution(versions)),
        }
    )
    context = {"deployment": deployment, "dashboard": dashboard, "rows": rows, "figures": figures}
    sections = render_to_string("monitoring/_dashboard_sections.html", context, request=request)
    etag = quote_etag(hashlib.blake2b(sections.encode(), digest_size=16).hexdigest())
    query = urlencode({"window": window, **({"version": version.number} if version is not None else {})})
    return {
        **context,
        "sections": sections,
        "etag": etag,
        "live_headers": json.dumps({"If-None-Match": etag}),
        "poll": DASHBOARD_POLL_SECONDS,
        "query": query,
    }


@login_required
@require_GET
def deployment_dashboard(request: HttpRequest, pk: int) -> HttpResponse:
    """A deployment's throughput, errors and latency per model version over 1h/24h/7d/30d, updated live."""
    deployment = _visible_deployment(request, pk)
    context = _dashboard_context(request, deployment)
    context["windows"] = list(selectors.DASHBOARD_WINDOWS)
    context["model_versions"] = deployment.registered_model.versions.order_by("-number").values_list(
        "number", flat=True
    )
    return render(request, "monitoring/dashboard.html", context)


@login_required
@require_GET
def deployment_dashboard_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The dashboard's figures, polled by htmx; 304 (and no swap) while they are unchanged."""
    context = _dashboard_context(request, _visible_deployment(request, pk))
    if not_modified := get_conditional_response(request, etag=context["etag"]):
        # htmx would swap the empty body of a 304 in.
        not_modified["HX-Reswap"] = "none"
        not_modified["ETag"] = context["etag"]
        return not_modified
    response = render(request, "monitoring/_dashboard_live.html", context)
    response["ETag"] = context["etag"]
    return response


@login_required
@require_GET
def dashboard_list(request: HttpRequest) -> HttpResponse:
    """The deployments one can watch, each with its last hour of traffic (one grouped rollup query per page)."""
    deployments = Deployment.objects.for_user(request.user).select_related("project", "registered_model")
    filterset = DeploymentFilterSet(request.GET, deployments, request=request)
    deployments, status = filter_page(filterset)
    page = Paginator(deployments, PAGE_SIZE).get_page(request.GET.get("page"))
    last_hour = selectors.last_hour_traffic(deployment_ids=[deployment.pk for deployment in page.object_list])
    rows = [
        {"deployment": deployment, **last_hour.get(deployment.pk, {"requests": 0, "error_rate": None})}
        for deployment in page.object_list
    ]
    for row in rows:
        row["error_rate_text"] = _share(row["error_rate"])
    context = {"page": page, "rows": rows, "filter": filterset}
    return render(request, "monitoring/dashboard_list.html", context, status=status)


def _metric(value: float | None, digits: str = ".3f") -> str:
    return "–" if value is None else format(value, digits)


def _performance_row(row: Any, label: str) -> dict[str, Any]:
    """A version's realised metrics (each with the labelled rows behind it) and the CBPE estimate, as text."""
    realised, estimate = row.realised, row.estimate
    n = realised.n_labelled if realised is not None else 0
    if row.task == "regression":
        metrics = [
            ("MAE", _metric(getattr(realised, "mae", None), ".4g"), None),
            ("RMSE", _metric(getattr(realised, "rmse", None), ".4g"), None),
            ("R²", _metric(getattr(realised, "r2", None)), None),
        ]
    else:
        metrics = [
            ("Accuracy", _metric(getattr(realised, "accuracy", None)), _metric(getattr(estimate, "accuracy", None))),
            ("Precision (macro)", _metric(getattr(realised, "precision_macro", None)), None),
            ("Recall (macro)", _metric(getattr(realised, "recall_macro", None)), None),
            ("F1 (macro)", _metric(getattr(realised, "f1_macro", None)), _metric(getattr(estimate, "f1_macro", None))),
            ("ROC AUC", _metric(getattr(realised, "roc_auc", None)), None),
        ]
    return {
        "label": label,
        "task": row.task or "unknown",
        "predictions": row.predictions,
        "labelled": row.labelled,
        "labelled_share": _share(row.labelled / row.predictions if row.predictions else None),
        "n_rows": n,
        "metrics": metrics,
        "reason": row.reason,
        "roc_auc_reason": getattr(realised, "roc_auc_reason", None),
        "estimate_rows": estimate.n_rows if estimate is not None else 0,
        "estimate_calibrated": estimate.calibrated if estimate is not None else None,
        "estimate_reason": row.estimate_reason,
        "truncated": row.truncated,
        "labelled_sample": row.labelled_sample,
        "unlabelled": row.predictions - row.labelled,
        "unlabelled_sample": row.unlabelled_sample,
    }


@login_required
@require_GET
def deployment_performance(request: HttpRequest, pk: int) -> HttpResponse:
    """Accuracy (or regression errors) per model version from the labels users sent, the label-free estimate
    beside it, accuracy over time, the prediction distribution over time, and drift per column over time."""
    deployment = _visible_deployment(request, pk)
    window = selectors.dashboard_window(request.GET.get("window"))
    performance = services.check_model_performance(deployment=deployment, actor=request.user, window=window)
    span = {"since": performance.since, "until": performance.until}
    rows = [
        _performance_row(row, performance.labels[(row.model_version_id, row.shadow)]) for row in performance.versions
    ]
    context = {
        "deployment": deployment,
        "performance": performance,
        "rows": rows,
        "windows": list(selectors.DASHBOARD_WINDOWS),
        "row_limit": telemetry.PERFORMANCE_ROW_LIMIT,
        "trend_figure": charts.figure_json(charts.plot_accuracy_trends(performance.trend, performance.labels, **span))
        if performance.trend
        else None,
        "distribution_figure": charts.figure_json(charts.plot_prediction_distribution(performance.distribution, **span))
        if performance.distribution.steps
        else None,
        "drift_figure": charts.figure_json(charts.plot_drift_by_column(performance.drift))
        if performance.drift
        else None,
    }
    return render(request, "monitoring/performance.html", context)
