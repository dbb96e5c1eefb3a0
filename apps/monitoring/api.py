"""The monitoring API: a deployment's dashboard figures; drift reports (list, detail, run) and references (list,
build). Viewers read; editors run and build; outsiders see nothing (404), including a deployment they name."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import ProjectScopedViewSetMixin
from apps.core.exceptions import NotFound
from apps.deployments.models import Deployment
from apps.monitoring import selectors, services
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.filters import DriftReferenceFilterSet, DriftReportFilterSet
from apps.monitoring.models import DriftReference, DriftReport
from apps.registry.models import ModelVersion
from apps.telemetry.models import LATENCY_BUCKETS_MS


class DriftReferenceSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="model_version.number", read_only=True)

    class Meta:
        model = DriftReference
        fields = [
            "id",
            "deployment",
            "model_version",
            "version",
            "source",
            "dataset_version",
            "window_start",
            "window_end",
            "n_rows",
            "columns",
            "profile_sha256",
            "created_at",
        ]


class DriftReportSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="deployment.project.slug", read_only=True)
    status = serializers.CharField(read_only=True, help_text="The job's: queued, running, succeeded or failed.")
    progress = serializers.FloatField(source="job.progress", default=None, read_only=True)
    version = serializers.IntegerField(source="model_version.number", read_only=True)

    class Meta:
        model = DriftReport
        fields = [
            "id",
            "project",
            "deployment",
            "model_version",
            "version",
            "reference",
            "window_start",
            "window_end",
            "status",
            "progress",
            "job",
            "n_rows",
            "drift_share",
            "dataset_drift",
            "reason",
            "created_at",
        ]


class DriftReportDetailSerializer(DriftReportSerializer):
    class Meta(DriftReportSerializer.Meta):
        fields = [*DriftReportSerializer.Meta.fields, "result", "histograms"]


class DriftRunSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    window = serializers.CharField(required=False, help_text="How far back from now: 1h, 24h, 7d, 2w (default 24h).")
    start = serializers.DateTimeField(required=False, help_text="Or an explicit range: its start…")
    end = serializers.DateTimeField(required=False, help_text="…and its end (default now).")

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if "window" in data and "start" in data:
            raise serializers.ValidationError({"window": "Give either window or start (and end), not both."})
        return data


class DriftReferenceCreateSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    source = serializers.ChoiceField(choices=ReferenceSource.choices)
    version = serializers.IntegerField(
        required=False, help_text="A model version id; default: the deployment's main live version."
    )
    start = serializers.DateTimeField(required=False, help_text="source=traffic: the window's start…")
    end = serializers.DateTimeField(required=False, help_text="…and end.")


def _deployment(pk: int) -> Deployment:
    """The deployment a POST names; the service's role check answers 404 to outsiders, so absent ones are too."""
    deployment = Deployment.objects.select_related("project").filter(pk=pk).first()
    if deployment is None:
        raise NotFound("No such deployment.", field="deployment")
    return deployment


class DriftReportViewSet(
    ProjectScopedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Drift reports of your projects' deployments; POST runs one (editors) and answers 202 with it queued."""

    project_path = "deployment__project"
    serializer_class = DriftReportSerializer
    filterset_class = DriftReportFilterSet
    queryset = DriftReport.objects.none()

    def get_queryset(self) -> QuerySet[DriftReport]:
        return self.scope(
            DriftReport.objects.select_related("deployment__project", "model_version", "job").defer(
                "result", "histograms"
            )
        )

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        report = self.get_object()
        report = DriftReport.objects.select_related("deployment__project", "model_version", "job").get(pk=report.pk)
        return Response(DriftReportDetailSerializer(report).data)

    @extend_schema(request=DriftRunSerializer, responses={202: DriftReportSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = DriftRunSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        report = services.drift_report_run(
            deployment=_deployment(data["deployment"]),
            actor=request.user,
            window=services.parse_window(data["window"]) if "window" in data else None,
            start=data.get("start"),
            end=data.get("end"),
        )
        report.refresh_from_db()
        return Response(DriftReportSerializer(report).data, status=status.HTTP_202_ACCEPTED)


class DriftReferenceViewSet(ProjectScopedViewSetMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The references drift reports compare with; POST builds one (editors): from the version's training
    dataset version (`source=training`) or from a window of the deployment's logged traffic (`source=traffic`)."""

    project_path = "deployment__project"
    serializer_class = DriftReferenceSerializer
    filterset_class = DriftReferenceFilterSet
    queryset = DriftReference.objects.none()

    def get_queryset(self) -> QuerySet[DriftReference]:
        return self.scope(DriftReference.objects.select_related("model_version"))

    @extend_schema(request=DriftReferenceCreateSerializer, responses={201: DriftReferenceSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = DriftReferenceCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        deployment = _deployment(data["deployment"])
        version = None
        if "version" in data:
            version = ModelVersion.objects.filter(pk=data["version"]).first()
            if version is None:
                raise NotFound("No such model version.", field="version")
        reference = services.drift_reference_build(
            deployment=deployment,
            version=version,
            source=data["source"],
            actor=request.user,
            window_start=data.get("start"),
            window_end=data.get("end"),
        )
        return Response(DriftReferenceSerializer(reference).data, status=status.HTTP_201_CREATED)


def _visible_deployment(request: Request, pk: int) -> Deployment:
    deployment = Deployment.objects.for_user(request.user).select_related("registered_model").filter(pk=pk).first()
    if deployment is None:
        raise NotFound("No such deployment in your projects.")
    return deployment


def _point(point: Any) -> dict[str, Any]:
    return {
        "start": point.start,
        "requests": point.requests,
        "errors": point.errors,
        "error_rate": point.error_rate,
        "p50_ms": point.p50_ms,
        "p90_ms": point.p90_ms,
        "p99_ms": point.p99_ms,
        "mean_ms": point.mean_ms,
    }


def dashboard_data(dashboard: selectors.Dashboard) -> dict[str, Any]:
    """A dashboard as JSON-able data: the same figures the page draws."""
    return {
        "deployment": dashboard.deployment_id,
        "window": dashboard.window,
        "since": dashboard.since,
        "until": dashboard.until,
        "step_seconds": int(dashboard.step.total_seconds()),
        "version": dashboard.version,
        "empty": dashboard.empty,
        "latency_buckets_ms": [*LATENCY_BUCKETS_MS, None],
        "versions": [
            {
                "model_version": series.model_version_id or None,
                "version": series.version,
                "shadow": series.shadow,
                "label": series.label,
                "requests": series.totals.requests,
                "errors": series.totals.errors,
                "error_rate": series.totals.error_rate,
                "throughput_rps": series.throughput_rps,
                "p50_ms": series.totals.p50_ms,
                "p90_ms": series.totals.p90_ms,
                "p99_ms": series.totals.p99_ms,
                "mean_ms": series.totals.mean_ms,
                "latency_histogram": list(series.totals.buckets),
                "series": [_point(point) for point in series.points],
            }
            for series in dashboard.versions
        ],
    }


class DeploymentMetricsApi(APIView):
    """A deployment's dashboard: `GET /api/v1/deployments/{id}/metrics/?window=24h[&version=N]`.

    Per model version (live and shadow apart): requests, errors, throughput, latency p50/p90/p99 and the latency
    histogram over the window, and the same per step of its time axis, from the per-minute rollups. Any member
    of the deployment's project may read; everyone else gets 404.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("window", str, enum=list(selectors.DASHBOARD_WINDOWS), description="Default 24h."),
            OpenApiParameter("version", int, description="Only this model version (its number)."),
        ],
        responses={200: OpenApiResponse(description="window, and per version: totals, histogram and series")},
    )
    def get(self, request: Request, deployment_id: int) -> Response:
        deployment = _visible_deployment(request, deployment_id)
        window = selectors.dashboard_window(request.query_params.get("window"))
        version = selectors.dashboard_version(deployment, request.query_params.get("version"))
        dashboard = selectors.deployment_dashboard(deployment=deployment, window=window, version=version)
        return Response(dashboard_data(dashboard))


def _drift_columns(report: DriftReport) -> dict[str, Any]:
    return {
        "report": report.pk,
        "window_end": report.window_end,
        "drift_share": report.drift_share,
        "columns": [
            {key: column.get(key) for key in ("column", "test", "statistic", "threshold", "drifted", "psi")}
            for column in (report.result or {}).get("columns", [])
        ],
    }


class DeploymentPerformanceTrendApi(APIView):
    """What the performance page draws over time: `GET /api/v1/deployments/{id}/performance-trend/?window=24h`.

    `trend`: accuracy (classifiers) or MAE (regression) per version and step, with the labelled rows behind
    each point; `predictions`: the live answers per step (class counts, or p10/p50/p90 of the values); `drift`:
    the per-column results of the deployment's latest drift reports. The metrics per version with the CBPE
    estimate are at `deployments/{id}/performance/`. Members read; everyone else gets 404.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("window", str, enum=list(selectors.DASHBOARD_WINDOWS), description="Default 24h."),
        ],
        responses={200: OpenApiResponse(description="trend, predictions and drift per column over the window")},
    )
    def get(self, request: Request, deployment_id: int) -> Response:
        deployment = _visible_deployment(request, deployment_id)
        performance = services.check_model_performance(
            deployment=deployment,
            actor=request.user,
            window=request.query_params.get("window") or "24h",
            metrics=False,  # this answer has no per-version metrics: spare their reads and the CBPE fit
        )
        distribution = performance.distribution
        return Response(
            {
                "deployment": deployment.pk,
                "window": performance.window,
                "since": performance.since,
                "until": performance.until,
                "step_seconds": int(performance.step.total_seconds()),
                "trend_truncated": performance.trend_truncated,
                "trend": [
                    {
                        "model_version": point.model_version_id,
                        "shadow": point.shadow,
                        "label": performance.labels[(point.model_version_id, point.shadow)],
                        "start": point.start,
                        "metric": point.metric,
                        "value": point.value,
                        "n_labelled": point.n,
                    }
                    for point in performance.trend
                ],
                "predictions": {
                    "kind": distribution.kind,
                    "steps": distribution.steps,
                    "classes": distribution.classes,
                    "quantiles": distribution.quantiles,
                    "n_rows": distribution.n_rows,
                    "truncated": distribution.truncated,
                },
                "drift": [_drift_columns(report) for report in performance.drift],
            }
        )


router = routers.SimpleRouter()
router.register("drift-reports", DriftReportViewSet, basename="drift-report")
router.register("drift-references", DriftReferenceViewSet, basename="drift-reference")
