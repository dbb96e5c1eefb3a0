"""The drift pages: the list of reports, a report (per-column table, reference-vs-current histograms, the
deployment's drift share over time), and running a report from a page. Thin: the run goes through the service,
which checks the role; outsiders get 404, viewers read, editors run."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.core.choices import JobStatus, ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.filters import filter_page
from apps.core.permissions import has_project_role
from apps.deployments.models import Deployment
from apps.monitoring import charts, selectors, services
from apps.monitoring.filters import DriftReportFilterSet

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
