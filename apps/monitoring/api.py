"""The drift API: reports (list, detail, run) and references (list, build). Viewers read; editors run and build;
outsiders see nothing (404), including a deployment they name in a POST."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import ProjectScopedViewSetMixin
from apps.core.exceptions import NotFound
from apps.deployments.models import Deployment
from apps.monitoring import services
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.filters import DriftReferenceFilterSet, DriftReportFilterSet
from apps.monitoring.models import DriftReference, DriftReport
from apps.registry.models import ModelVersion


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


router = routers.SimpleRouter()
router.register("drift-reports", DriftReportViewSet, basename="drift-report")
router.register("drift-references", DriftReferenceViewSet, basename="drift-reference")
