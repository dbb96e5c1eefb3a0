"""The datasets API: datasets, their versions (upload, profile, validation, download) and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import ProjectField, ProjectScopedViewSetMixin
from apps.core.artifacts import ArtifactError, ArtifactIntegrityError
from apps.core.exceptions import Conflict
from apps.core.services import artifact_verified_path
from apps.datasets import selectors, services
from apps.datasets.choices import ValidationStatus
from apps.datasets.filters import DatasetFilterSet
from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion


class DatasetVersionBriefSerializer(serializers.ModelSerializer):
    validation_status = serializers.ChoiceField(choices=ValidationStatus.choices, read_only=True, allow_blank=True)

    class Meta:
        model = DatasetVersion
        fields = ["id", "number", "status", "validation_status", "blocking_failed", "row_count", "created_at"]


class DatasetSerializer(serializers.ModelSerializer):
    project = ProjectField()
    version_count = serializers.IntegerField(read_only=True)
    latest_version = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "project",
            "name",
            "description",
            "rules",
            "version_count",
            "latest_version",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    @extend_schema_field(DatasetVersionBriefSerializer(allow_null=True))
    def get_latest_version(self, dataset: Dataset) -> dict[str, Any] | None:
        latest = selectors.latest_version(dataset)
        return DatasetVersionBriefSerializer(latest).data if latest else None


class DatasetUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    rules = serializers.JSONField(
        required=False, help_text='Validation rules, such as {"columns": {"age": {"min": 0}}, "target": "label"}.'
    )


class JobProgressSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    progress = serializers.FloatField()
    log = serializers.CharField()
    error = serializers.CharField()


class DatasetVersionSerializer(serializers.ModelSerializer):
    dataset = serializers.PrimaryKeyRelatedField(read_only=True)
    parent = serializers.SlugRelatedField(slug_field="number", read_only=True, help_text="The parent's number.")
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    validation_status = serializers.ChoiceField(choices=ValidationStatus.choices, read_only=True, allow_blank=True)
    job = JobProgressSerializer(read_only=True, allow_null=True)

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "dataset",
            "number",
            "sha256",
            "format",
            "file_name",
            "size_bytes",
            "row_count",
            "column_count",
            "status",
            "error",
            "validation_status",
            "blocking_failed",
            "schema",
            "parent",
            "job",
            "created_by",
            "created_at",
            "profiled_at",
        ]


class DatasetVersionUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A .csv (UTF-8, comma-separated, with a header row) or .parquet file.")


class DatasetSplitSerializer(serializers.ModelSerializer):
    version = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = DatasetSplit
        fields = [
            "id",
            "version",
            "test_size",
            "seed",
            "stratify",
            "stratified",
            "note",
            "train_count",
            "test_count",
            "test_indices_sha256",
            "created_at",
        ]


class DatasetSplitCreateSerializer(serializers.Serializer):
    test_size = serializers.FloatField(default=0.2, min_value=0.0, max_value=1.0)
    seed = serializers.IntegerField(default=42, min_value=0)
    stratify = serializers.CharField(required=False, allow_blank=True, default="", help_text="A column name.")


class DatasetViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Datasets of your projects. Viewers read; editors create datasets, change rules and upload versions."""

    serializer_class = DatasetSerializer
    filterset_class = DatasetFilterSet
    queryset = Dataset.objects.none()
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list(user=self.request.user)

    def perform_create(self, serializer: DatasetSerializer) -> None:
        data = serializer.validated_data
        dataset = services.dataset_create(
            project=data["project"],
            name=data["name"],
            description=data.get("description", ""),
            rules=data.get("rules"),
            actor=self.request.user,
        )
        serializer.instance = self.get_queryset().get(pk=dataset.pk)

    @extend_schema(request=DatasetUpdateSerializer, responses=DatasetSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the description or the validation rules (editors)."""
        dataset = self.get_object()
        payload = DatasetUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.dataset_update(dataset=dataset, actor=request.user, **payload.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=dataset.pk)).data)

    @extend_schema(exclude=True)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise exceptions.MethodNotAllowed("PUT")

    @extend_schema(
        methods=["GET"],
        description="The dataset's versions, newest first.",
        responses=DatasetVersionSerializer(many=True),
    )
    @extend_schema(
        methods=["POST"],
        description=(
            "Upload a CSV or Parquet file (multipart field `file`) as a new version (editors). The structure is "
            "checked now; profiling and validation run on the worker."
        ),
        request={"multipart/form-data": DatasetVersionUploadSerializer},
        responses={
            201: OpenApiResponse(DatasetVersionSerializer, description="A new version; profiling is queued."),
            200: OpenApiResponse(DatasetVersionSerializer, description="The same content exists: that version."),
            400: OpenApiResponse(description="The file is not a readable table; the message says why."),
            413: OpenApiResponse(description="The file is larger than the upload limit."),
        },
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[MultiPartParser, FormParser])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        """List the versions, newest first, or (editors) upload a CSV or Parquet file as a new version."""
        dataset = self.get_object()
        if request.method == "POST":
            payload = DatasetVersionUploadSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            upload = payload.validated_data["file"]
            version, created = services.dataset_version_create(
                dataset=dataset,
                path=Path(upload.temporary_file_path()),
                file_name=upload.name,
                sha256=getattr(upload, "sha256", None) or None,
                size=upload.size,
                actor=request.user,
            )
            version = selectors.dataset_versions(dataset).get(pk=version.pk)
            return Response(
                DatasetVersionSerializer(version).data,
                status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
            )
        page = self.paginate_queryset(selectors.dataset_versions(dataset))
        return self.get_paginated_response(DatasetVersionSerializer(page, many=True).data)


class DatasetVersionViewSet(ProjectScopedViewSetMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One dataset version: its profile, validation report, file and train/test splits."""

    serializer_class = DatasetVersionSerializer
    queryset = DatasetVersion.objects.none()
    project_path = "dataset__project"

    def get_queryset(self) -> QuerySet[DatasetVersion]:
        return self.scope(DatasetVersion.objects.select_related("dataset__project", "job", "created_by", "parent"))

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def profile(self, request: Request, pk: str | None = None) -> Response:
        """Per-column statistics (empty until the version is ready): counts, quantiles, histograms, top values."""
        return Response(self.get_object().profile)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def validation(self, request: Request, pk: str | None = None) -> Response:
        """The validation report: `status`, `blocking_failed`, `summary` and each check with its message."""
        return Response(self.get_object().validation)

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="The stored file failed hash verification; this is audited."),
        }
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        """The version's file as uploaded, after its sha256 is verified."""
        version = self.get_object()
        try:
            path = artifact_verified_path(
                sha256=version.sha256, project=version.dataset.project, obj=version, actor=request.user
            )
        except ArtifactIntegrityError:
            raise Conflict("file: the stored file failed hash verification and is withheld; this is audited.") from None
        except ArtifactError:
            raise Conflict("file: the stored file is missing from the artifact store.") from None
        # FileResponse streams the file in chunks and closes it when the response is done.
        return FileResponse(open(path, "rb"), as_attachment=True, filename=version.file_name)

    @extend_schema(methods=["GET"], description="The version's splits.", responses=DatasetSplitSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        description="Make a reproducible train/test split (editors); the same parameters return the same split.",
        request=DatasetSplitCreateSerializer,
        responses={201: DatasetSplitSerializer, 200: DatasetSplitSerializer},
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[JSONParser, FormParser])
    def splits(self, request: Request, pk: str | None = None) -> Response:
        """List splits, or (editors) make a reproducible train/test split; the same parameters return the same split."""
        version = self.get_object()
        if request.method == "POST":
            payload = DatasetSplitCreateSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            created = selectors.dataset_split_find(version=version, **payload.validated_data) is None
            split = services.dataset_version_split(version=version, actor=request.user, **payload.validated_data)
            return Response(
                DatasetSplitSerializer(split).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
            )
        page = self.paginate_queryset(version.splits.all())
        return self.get_paginated_response(DatasetSplitSerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: DatasetVersionSerializer})
    @action(detail=True, methods=["post"])
    def revalidate(self, request: Request, pk: str | None = None) -> Response:
        """Profile and validate the version again with the dataset's current rules (editors)."""
        version = self.get_object()
        services.dataset_version_revalidate(version=version, actor=request.user)
        return Response(DatasetVersionSerializer(self.get_object()).data, status=status.HTTP_202_ACCEPTED)


router = routers.SimpleRouter()
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("dataset-versions", DatasetVersionViewSet, basename="dataset-version")
