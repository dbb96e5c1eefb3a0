"""The experiments API: experiments, runs (MLflow-style logging), pipeline runs and HPO studies."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import ProjectField, ProjectSlugField
from apps.datasets.models import Dataset, DatasetVersion
from apps.experiments import selectors, services
from apps.experiments.choices import RUN_END_CHOICES
from apps.experiments.filters import ExperimentFilterSet, PipelineRunFilterSet, RunFilterSet, StudyFilterSet
from apps.experiments.models import Experiment, PipelineRun, PipelineStage, Run, RunArtifact, RunMetric, Study
from apps.experiments.pipeline_config import STAGE_GROUPS


def _param(name: str, description: str, kind: Any = OpenApiTypes.STR) -> OpenApiParameter:
    return OpenApiParameter(name, kind, OpenApiParameter.QUERY, description=description)


# Experiments


class ExperimentSerializer(serializers.ModelSerializer):
    project = ProjectField()
    run_count = serializers.IntegerField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Experiment
        fields = ["id", "project", "name", "description", "run_count", "created_by", "created_at"]


class ExperimentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Experiments group runs. Viewers read; editors create."""

    serializer_class = ExperimentSerializer
    filterset_class = ExperimentFilterSet
    queryset = Experiment.objects.none()

    def get_queryset(self) -> QuerySet[Experiment]:
        return selectors.experiment_list(user=self.request.user)

    def perform_create(self, serializer: ExperimentSerializer) -> None:
        data = serializer.validated_data
        experiment = services.experiment_create(
            project=data["project"], name=data["name"], description=data.get("description", ""), actor=self.request.user
        )
        experiment.run_count = 0
        serializer.instance = experiment


# Runs


class RunArtifactSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = RunArtifact
        fields = ["id", "name", "kind", "sha256", "size_bytes", "content_type", "created_at", "download_url"]

    def get_download_url(self, artifact: RunArtifact) -> str:
        return reverse("experiments:artifact-download", args=[artifact.run_id, artifact.pk])


class RunSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(source="experiment.project", slug_field="slug", read_only=True)
    experiment_name = serializers.CharField(source="experiment.name", read_only=True)
    artifacts = RunArtifactSerializer(many=True, read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "project",
            "experiment",
            "experiment_name",
            "name",
            "status",
            "params",
            "tags",
            "metrics",
            "cv_metrics",
            "task",
            "algorithm",
            "passes_thresholds",
            "threshold_failures",
            "dataset_version",
            "dataset_split",
            "code_version",
            "package_versions",
            "parent",
            "pipeline_run",
            "study",
            "trial_number",
            "attempts",
            "error",
            "artifacts",
            "created_by",
            "created_at",
            "started_at",
            "ended_at",
        ]


class RunDetailSerializer(RunSerializer):
    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "plots", "log"]


@extend_schema_field(OpenApiTypes.INT)
class VisibleExperimentField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[Experiment]:
        return Experiment.objects.for_user(self.context["request"].user)


@extend_schema_field(OpenApiTypes.INT)
class VisibleRunField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[Run]:
        return Run.objects.for_user(self.context["request"].user)


@extend_schema_field(OpenApiTypes.INT)
class VisibleDatasetVersionField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[DatasetVersion]:
        return DatasetVersion.objects.filter(dataset__in=Dataset.objects.for_user(self.context["request"].user))


class RunCreateSerializer(serializers.Serializer):
    experiment = VisibleExperimentField(required=False)
    project = ProjectSlugField(required=False, help_text="With experiment_name: the experiment is created if missing.")
    experiment_name = serializers.CharField(required=False, max_length=100)
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    params = serializers.DictField(required=False)
    tags = serializers.DictField(required=False)
    parent = VisibleRunField(required=False, allow_null=True)
    dataset_version = VisibleDatasetVersionField(required=False, allow_null=True)
    code_version = serializers.CharField(required=False, allow_blank=True, max_length=64)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("experiment") and not (attrs.get("project") and attrs.get("experiment_name")):
            raise serializers.ValidationError("Give `experiment` (an id), or `project` and `experiment_name`.")
        return attrs


class MetricPointSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=128)
    value = serializers.FloatField()
    step = serializers.IntegerField(required=False, default=0, min_value=0)
    timestamp = serializers.DateTimeField(required=False)


class LogMetricsSerializer(serializers.Serializer):
    metrics = MetricPointSerializer(many=True, help_text="A batch of points (at most 1000).")


class LogParamsSerializer(serializers.Serializer):
    params = serializers.DictField(required=False)
    tags = serializers.DictField(required=False)


class SetTerminatedSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=RUN_END_CHOICES)
    error = serializers.CharField(required=False, allow_blank=True)


class RunMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunMetric
        fields = ["name", "step", "value", "timestamp"]


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Runs: list and read (viewers); create and log params, metrics and the end state (editors), MLflow-style."""

    filterset_class = RunFilterSet
    queryset = Run.objects.none()

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    def get_queryset(self) -> QuerySet[Run]:
        return selectors.run_list(user=self.request.user).prefetch_related("artifacts", "created_by")

    @extend_schema(request=RunCreateSerializer, responses={201: RunSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = RunCreateSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        experiment = data.get("experiment")
        if experiment is None:
            experiment = services.experiment_get_or_create(
                project=data["project"], name=data["experiment_name"], actor=request.user
            )
        run = services.run_create(
            experiment=experiment,
            actor=request.user,
            name=data.get("name", ""),
            params=data.get("params"),
            tags=data.get("tags"),
            parent=data.get("parent"),
            dataset_version=data.get("dataset_version"),
            code_version_value=data.get("code_version", ""),
        )
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=LogMetricsSerializer, responses={200: RunSerializer})
    @action(detail=True, methods=["post"], url_path="log-metrics")
    def log_metrics(self, request: Request, pk: str | None = None) -> Response:
        """Append a batch of metric points `{name, value, step, timestamp}`; the run must be running."""
        run = self.get_object()
        payload = LogMetricsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.run_log_metrics(run=run, actor=request.user, metrics=payload.validated_data["metrics"])
        run.refresh_from_db()
        return Response(RunSerializer(run).data)

    @extend_schema(request=LogParamsSerializer, responses={200: RunSerializer})
    @action(detail=True, methods=["post"], url_path="log-params")
    def log_params(self, request: Request, pk: str | None = None) -> Response:
        """Add params (a logged param cannot change) and set tags."""
        run = self.get_object()
        payload = LogParamsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        run = services.run_log_params(run=run, actor=request.user, **payload.validated_data)
        return Response(RunSerializer(run).data)

    @extend_schema(request=SetTerminatedSerializer, responses={200: RunSerializer})
    @action(detail=True, methods=["post"], url_path="set-terminated")
    def set_terminated(self, request: Request, pk: str | None = None) -> Response:
        """End a running run as succeeded, failed or cancelled."""
        run = self.get_object()
        payload = SetTerminatedSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        run = services.run_set_terminated(run=run, actor=request.user, **payload.validated_data)
        return Response(RunSerializer(run).data)

    @extend_schema(parameters=[_param("name", "Only this metric.")], responses={200: RunMetricSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str | None = None) -> Response:
        """The metric series of the run: its (name, step, value, timestamp) points in name and step order, paged
        like every list (`page_size` up to the maximum; `next` links the rest), since a long training run logs
        hundreds of thousands of points."""
        run = self.get_object()
        points = run.metric_points.order_by("name", "step", "id")
        if request.query_params.get("name"):
            points = points.filter(name=request.query_params["name"])
        page = self.paginate_queryset(points)
        return self.get_paginated_response(RunMetricSerializer(page, many=True).data)


# Pipeline runs


class PipelineStageSerializer(serializers.ModelSerializer):
    class Meta:
        model = PipelineStage
        fields = [
            "name",
            "position",
            "status",
            "requested",
            "outputs",
            "error",
            "attempts",
            "started_at",
            "ended_at",
            "duration_seconds",
            "cpu_seconds",
            "peak_rss_bytes",
            "log",
        ]


class PipelineRunSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    experiment_name = serializers.CharField(source="experiment.name", read_only=True)
    stages = PipelineStageSerializer(many=True, read_only=True)
    study = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = PipelineRun
        fields = [
            "id",
            "project",
            "experiment",
            "experiment_name",
            "status",
            "config",
            "config_text",
            "dataset_version",
            "run",
            "candidate_run",
            "study",
            "error",
            "stages",
            "created_by",
            "created_at",
            "started_at",
            "ended_at",
        ]

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_study(self, pipeline_run: PipelineRun) -> int | None:
        study = getattr(pipeline_run, "study", None)
        return study.pk if study else None


class PipelineRunCreateSerializer(serializers.Serializer):
    project = ProjectSlugField()
    config = serializers.JSONField(required=False, help_text="The pipeline config as a JSON object.")
    config_yaml = serializers.CharField(
        required=False, trim_whitespace=False, help_text="The pipeline config as YAML (or JSON) text."
    )
    stage = serializers.ChoiceField(
        choices=sorted(STAGE_GROUPS), required=False, help_text="Run only up to this stage (or stage group)."
    )
    experiment_id = serializers.CharField(required=False, max_length=100, help_text="Overrides the config's.")
    model_type = serializers.CharField(required=False, max_length=64, help_text="Overrides model_config.algorithm.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("config" in attrs) == ("config_yaml" in attrs):
            raise serializers.ValidationError("Give the config either as `config` (an object) or as `config_yaml`.")
        return attrs


class PipelineRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Pipeline runs: start one from a config (editors), follow its stages, cancel it (editors)."""

    serializer_class = PipelineRunSerializer
    filterset_class = PipelineRunFilterSet
    queryset = PipelineRun.objects.none()

    def get_queryset(self) -> QuerySet[PipelineRun]:
        return selectors.pipeline_run_list(user=self.request.user).select_related("study", "created_by")

    @extend_schema(request=PipelineRunCreateSerializer, responses={201: PipelineRunSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Start a pipeline run. Stages run on the Celery worker; follow them with GET on the new run."""
        payload = PipelineRunCreateSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        pipeline_run = services.pipeline_run_create(
            project=data["project"],
            actor=request.user,
            config=data.get("config"),
            config_text=data.get("config_yaml", ""),
            experiment_id=data.get("experiment_id"),
            algorithm=data.get("model_type"),
            stage=data.get("stage"),
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=pipeline_run.pk)).data, status=201)

    @extend_schema(request=None, responses={202: PipelineRunSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a queued or running pipeline run; a running one passes through `cancelling`."""
        pipeline_run = self.get_object()
        services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=pipeline_run.pk)).data, status=202)


# Studies


class StudySerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    trial_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Study
        fields = [
            "id",
            "project",
            "experiment",
            "pipeline_run",
            "parent_run",
            "storage_name",
            "metric",
            "direction",
            "sampler",
            "pruner",
            "n_trials",
            "timeout_seconds",
            "search",
            "status",
            "trial_count",
            "best_run",
            "best_value",
            "best_params",
            "importances",
            "error",
            "created_at",
            "started_at",
            "ended_at",
        ]


class StudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Hyperparameter searches; their trials are runs (`GET /runs/?study=<id>`)."""

    serializer_class = StudySerializer
    filterset_class = StudyFilterSet
    queryset = Study.objects.none()

    def get_queryset(self) -> QuerySet[Study]:
        return selectors.study_list(user=self.request.user)


router = routers.SimpleRouter()
router.register("experiments", ExperimentViewSet, basename="experiment")
router.register("runs", RunViewSet, basename="run")
router.register("pipeline-runs", PipelineRunViewSet, basename="pipeline-run")
router.register("studies", StudyViewSet, basename="study")
