"""The registry API: registered models, model versions (upload, from a run, export, aliases), promotion
requests with approve/reject/withdraw, webhooks with their deliveries, and notifications."""

from __future__ import annotations

import tempfile
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import ProjectField, ProjectScopedViewSetMixin, ProjectSlugField
from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.notifications.api import DeliverySerializer
from apps.core.notifications.models import Delivery
from apps.registry import selectors, services
from apps.registry.choices import ModelVersionStage, RegistryEventType, WebhookKind
from apps.registry.filters import (
    ModelVersionFilterSet,
    NotificationFilterSet,
    PromotionRequestFilterSet,
    RegisteredModelFilterSet,
    WebhookFilterSet,
)
from apps.registry.models import (
    ModelAlias,
    ModelVersion,
    Notification,
    PromotionApproval,
    PromotionRequest,
    RegisteredModel,
    Webhook,
)


class UsernameField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="username", read_only=True, **kwargs)


# Models


class RegisteredModelSerializer(serializers.ModelSerializer):
    project = ProjectField()
    version_count = serializers.IntegerField(read_only=True)
    production_version = serializers.SerializerMethodField()
    aliases = serializers.SerializerMethodField()
    created_by = UsernameField()

    class Meta:
        model = RegisteredModel
        fields = [
            "id",
            "project",
            "name",
            "description",
            "tags",
            "version_count",
            "production_version",
            "aliases",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["tags", "created_at", "updated_at"]

    def get_production_version(self, model: RegisteredModel) -> int | None:
        versions = getattr(model, "production_versions", None)
        if versions is None:
            versions = list(model.versions.filter(stage=ModelVersionStage.PRODUCTION))
        return versions[0].number if versions else None

    def get_aliases(self, model: RegisteredModel) -> dict[str, int]:
        return {alias.name: alias.version.number for alias in model.aliases.all()}


class RegisteredModelUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    tags = serializers.DictField(required=False)


class RegisteredModelViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Registered models of your projects. Editors create models and edit descriptions and tags."""

    serializer_class = RegisteredModelSerializer
    filterset_class = RegisteredModelFilterSet
    queryset = RegisteredModel.objects.none()
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        return selectors.model_list(user=self.request.user)

    def perform_create(self, serializer: RegisteredModelSerializer) -> None:
        data = serializer.validated_data
        model = services.registered_model_create(
            project=data["project"], name=data["name"], description=data.get("description", ""), actor=self.request.user
        )
        serializer.instance = self.get_queryset().get(pk=model.pk)

    @extend_schema(request=RegisteredModelUpdateSerializer, responses=RegisteredModelSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the description (markdown) or the tags (editors)."""
        model = self.get_object()
        payload = RegisteredModelUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.registered_model_update(model=model, actor=request.user, **payload.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=model.pk)).data)


# Versions


class ModelVersionSerializer(serializers.ModelSerializer):
    model_name = serializers.CharField(source="model.name", read_only=True)
    project = serializers.CharField(source="model.project.slug", read_only=True)
    aliases = serializers.SerializerMethodField()
    created_by = UsernameField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "model_name",
            "project",
            "number",
            "label",
            "stage",
            "aliases",
            "flavor",
            "task",
            "sha256",
            "size_bytes",
            "signature",
            "input_example",
            "metrics",
            "params",
            "validation",
            "validation_passed",
            "source",
            "run",
            "pipeline_run",
            "dataset_version",
            "dataset_split",
            "code_version",
            "tags",
            "description",
            "integrity_error",
            "stage_changed_at",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_aliases(self, version: ModelVersion) -> list[str]:
        return sorted(alias.name for alias in version.aliases.all())


class ModelVersionUploadSerializer(serializers.Serializer):
    project = ProjectSlugField()
    model_name = serializers.CharField(max_length=100, help_text="Created when no model has this name yet.")
    file = serializers.FileField(
        help_text="A model bundle zip, a skops file (scikit-learn) or an XGBoost UBJSON/JSON model. "
        "Pickle/joblib files are refused unless the server trusts them."
    )
    signature = serializers.JSONField(
        required=False,
        help_text='Needed for a bare model file: {"inputs": [{"name": …, "type": "number"}], '
        '"outputs": {"type": "classes", "classes": […]}}. For a bundle it must match the manifest.',
    )
    input_example = serializers.JSONField(required=False, help_text="A list of row objects.")
    label = serializers.CharField(required=False, allow_blank=True, max_length=64)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = serializers.JSONField(required=False)
    validation_results = serializers.JSONField(
        required=False, help_text='{"metrics": {"accuracy": 0.95}, "thresholds": {"accuracy": ">=0.9"}}'
    )
    code_version = serializers.CharField(required=False, allow_blank=True, max_length=100)
    dataset_version = serializers.IntegerField(
        required=False, help_text="The id of the dataset version it was trained on."
    )


class ModelVersionFromRunSerializer(serializers.Serializer):
    run = serializers.IntegerField(help_text="A succeeded run with a model bundle.")
    model_name = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Defaults to the run's experiment name."
    )
    label = serializers.CharField(required=False, allow_blank=True, max_length=64)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = serializers.DictField(required=False)


class AliasSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number", read_only=True)
    updated_by = UsernameField()

    class Meta:
        model = ModelAlias
        fields = ["name", "version", "updated_by", "updated_at"]


class AliasRequestSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=40, help_text="champion, challenger, or ^[a-z][a-z0-9_-]{0,39}$.")
    comment = serializers.CharField(required=False, allow_blank=True)
    model = serializers.IntegerField(
        required=False, help_text="The model the alias belongs to; must be this version's."
    )


class ModelVersionViewSet(
    ProjectScopedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Model versions. POST registers one: multipart with a model file, or JSON with a run id (editors)."""

    serializer_class = ModelVersionSerializer
    filterset_class = ModelVersionFilterSet
    queryset = ModelVersion.objects.none()
    project_path = "model__project"
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[ModelVersion]:
        versions = self.scope(
            ModelVersion.objects.select_related("model__project", "created_by").prefetch_related("aliases")
        )
        return versions.order_by("-created_at", "-id")

    @extend_schema(
        request={
            "multipart/form-data": ModelVersionUploadSerializer,
            "application/json": ModelVersionFromRunSerializer,
        },
        responses={
            201: ModelVersionSerializer,
            400: OpenApiResponse(description="Bad input; the message names the field. Nothing is stored."),
            403: OpenApiResponse(description="You need the editor role."),
            413: OpenApiResponse(description="The file is larger than the upload limit."),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Register a version from an uploaded model file (multipart) or from a finished run (JSON `run`)."""
        if "file" in request.data or request.content_type.startswith("multipart/"):
            version = self._register_upload(request)
        else:
            version = self._register_run(request)
        return Response(
            ModelVersionSerializer(self.get_queryset().get(pk=version.pk)).data, status=status.HTTP_201_CREATED
        )

    def _register_upload(self, request: Request) -> ModelVersion:
        payload = ModelVersionUploadSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        project = data["project"]
        dataset_version = None
        if data.get("dataset_version") is not None:
            from apps.datasets.models import DatasetVersion

            dataset_version = DatasetVersion.objects.filter(
                pk=data["dataset_version"], dataset__project=project
            ).first()
            if dataset_version is None:
                raise exceptions.ValidationError({"dataset_version": "No such dataset version in this project."})
        upload = data["file"]
        return services.model_version_register_upload(
            project=project,
            model_name=data["model_name"],
            path=upload.temporary_file_path(),
            actor=request.user,
            signature=data.get("signature"),
            input_example=data.get("input_example"),
            label=data.get("label", ""),
            validation=data.get("validation_results"),
            code_version=data.get("code_version", ""),
            tags=data.get("tags"),
            description=data.get("description", ""),
            dataset_version=dataset_version,
        )

    def _register_run(self, request: Request) -> ModelVersion:
        payload = ModelVersionFromRunSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        from apps.experiments.models import Run

        run = Run.objects.for_user(request.user).select_related("experiment__project").filter(pk=data["run"]).first()
        if run is None:
            raise exceptions.ValidationError({"run": f"No run with id {data['run']} in your projects."})
        return services.model_version_register_from_run(
            run=run,
            actor=request.user,
            model_name=data.get("model_name", ""),
            label=data.get("label", ""),
            description=data.get("description", ""),
            tags=data.get("tags"),
        )

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="The stored artifact failed hash verification; this is audited."),
        }
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        """The version as a zip: the verified bundle (model.zip), signature.json and metadata.json."""
        version = self.get_object()
        # An anonymous temporary file: nothing is left on disk, whatever happens to the response.
        handle = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it)
        try:
            services.model_version_export(version=version, actor=request.user, target=handle)
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        name = f"{version.model.name}-v{version.number}.zip".replace("/", "_")
        return FileResponse(handle, as_attachment=True, filename=name, content_type="application/zip")

    @extend_schema(methods=["GET"], responses=AliasSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        description="Request that an alias point at this version (editors). The move happens when an approver "
        "approves the promotion request this creates.",
        request=AliasRequestSerializer,
        responses={201: OpenApiResponse(response=OpenApiTypes.OBJECT, description="The promotion request.")},
    )
    @action(detail=True, methods=["get", "post"])
    def aliases(self, request: Request, pk: str | None = None) -> Response:
        """The aliases pointing at this version, or (POST) a request to move an alias here."""
        version = self.get_object()
        if request.method == "POST":
            payload = AliasRequestSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            data = payload.validated_data
            model = None
            if data.get("model") is not None:
                model = RegisteredModel.objects.for_user(request.user).filter(pk=data["model"]).first()
                if model is None:
                    raise exceptions.ValidationError({"model": "No such registered model in your projects."})
            promotion = services.promotion_request_create(
                version=version,
                actor=request.user,
                target_alias=data["name"],
                comment=data.get("comment", ""),
                model=model,
            )
            return Response(PromotionRequestSerializer(promotion).data, status=status.HTTP_201_CREATED)
        return Response(AliasSerializer(version.aliases.select_related("version", "updated_by"), many=True).data)


# Promotion requests


class PromotionApprovalSerializer(serializers.ModelSerializer):
    approver = UsernameField()

    class Meta:
        model = PromotionApproval
        fields = ["approver", "decision", "comment", "created_at"]


class PromotionRequestSerializer(serializers.ModelSerializer):
    model_name = serializers.CharField(source="model.name", read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    requested_by = UsernameField()
    decided_by = UsernameField()
    overridden_by = UsernameField()
    approvals = PromotionApprovalSerializer(many=True, read_only=True)

    class Meta:
        model = PromotionRequest
        fields = [
            "id",
            "model",
            "model_name",
            "version",
            "version_number",
            "target_stage",
            "target_alias",
            "status",
            "comment",
            "required_approvals",
            "approvals",
            "gate_checks",
            "decision_gate_checks",
            "override_reason",
            "overridden_by",
            "previous_version",
            "requested_by",
            "created_at",
            "expires_at",
            "decided_by",
            "decided_at",
            "decision_comment",
        ]
        read_only_fields = fields


class PromotionRequestCreateSerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="The model version to move (id).")
    model = serializers.IntegerField(required=False, help_text="The registered model (id); must be the version's.")
    target_stage = serializers.ChoiceField(choices=ModelVersionStage.choices, required=False, allow_blank=True)
    target_alias = serializers.CharField(required=False, allow_blank=True, max_length=40)
    comment = serializers.CharField(required=False, allow_blank=True)


class PromotionDecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, help_text="Required to reject.")
    override_reason = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Owners only: approve although a gate check failed; the reason is recorded.",
    )


class PromotionRequestViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Promotion requests: editors ask, approvers other than the requester decide, the requester may withdraw."""

    serializer_class = PromotionRequestSerializer
    filterset_class = PromotionRequestFilterSet
    queryset = PromotionRequest.objects.none()
    project_path = "model__project"

    def get_queryset(self) -> QuerySet[PromotionRequest]:
        requests = selectors.request_list(user=self.request.user)
        return requests.prefetch_related("approvals__approver").order_by("-created_at", "-id")

    @extend_schema(request=PromotionRequestCreateSerializer, responses={201: PromotionRequestSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Request a stage change (`target_stage`) or an alias move (`target_alias`) for a version (editors)."""
        payload = PromotionRequestCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        version = (
            ModelVersion.objects.for_user(request.user).select_related("model__project").filter(pk=data["version"])
        )
        version = version.first()
        if version is None:
            raise exceptions.ValidationError({"version": f"No model version with id {data['version']}."})
        model = None
        if data.get("model") is not None:
            model = RegisteredModel.objects.for_user(request.user).filter(pk=data["model"]).first()
            if model is None:
                raise exceptions.ValidationError({"model": f"No registered model with id {data['model']}."})
        promotion = services.promotion_request_create(
            version=version,
            actor=request.user,
            target_stage=data.get("target_stage", ""),
            target_alias=data.get("target_alias", ""),
            comment=data.get("comment", ""),
            model=model,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=promotion.pk)).data, status=201)

    def _decided(self, promotion: PromotionRequest) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=promotion.pk)).data)

    @extend_schema(request=PromotionDecisionSerializer, responses=PromotionRequestSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        """Approve (approvers, not the requester). With enough approvals the transition happens at once."""
        promotion = self.get_object()
        payload = PromotionDecisionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.promotion_request_approve(request=promotion, actor=request.user, **payload.validated_data)
        return self._decided(promotion)

    @extend_schema(request=PromotionDecisionSerializer, responses=PromotionRequestSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        """Reject with a comment (approvers, not the requester)."""
        promotion = self.get_object()
        payload = PromotionDecisionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.promotion_request_reject(
            request=promotion, actor=request.user, comment=payload.validated_data.get("comment", "")
        )
        return self._decided(promotion)

    @extend_schema(request=PromotionDecisionSerializer, responses=PromotionRequestSerializer)
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str | None = None) -> Response:
        """Withdraw your own open request."""
        promotion = self.get_object()
        payload = PromotionDecisionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.promotion_request_withdraw(
            request=promotion, actor=request.user, comment=payload.validated_data.get("comment", "")
        )
        return self._decided(promotion)


# Webhooks


class WebhookSerializer(serializers.ModelSerializer):
    project = ProjectField()
    kind = serializers.ChoiceField(choices=WebhookKind.choices, default=WebhookKind.WEBHOOK)
    url = serializers.URLField(
        max_length=500, help_text="The endpoint. A Slack URL is a secret: it is shown masked, never in full."
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=RegistryEventType.choices), required=False, help_text="Empty: all."
    )
    secret = serializers.SerializerMethodField(help_text="The HMAC key of a webhook; shown to owners only.")
    created_by = UsernameField()

    class Meta:
        model = Webhook
        fields = ["id", "project", "kind", "url", "event_types", "is_active", "secret", "created_by", "created_at"]
        read_only_fields = ["is_active", "created_at"]

    def to_representation(self, webhook: Webhook) -> dict[str, Any]:
        data = super().to_representation(webhook)
        data["url"] = webhook.shown_url
        return data

    def get_secret(self, webhook: Webhook) -> str | None:
        owner_projects = self.context.get("owner_projects")
        is_owner = owner_projects is not None and webhook.project_id in owner_projects
        return webhook.secret if is_owner and webhook.kind == WebhookKind.WEBHOOK else None


class WebhookViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Webhooks (signed with HMAC-SHA256) and Slack incoming webhooks that receive your projects' registry events
    (owners manage them)."""

    serializer_class = WebhookSerializer
    filterset_class = WebhookFilterSet
    queryset = Webhook.objects.none()

    def get_queryset(self) -> QuerySet[Webhook]:
        return self.scope(Webhook.objects.select_related("project", "created_by"))

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        user = self.request.user
        owned = Project.objects.for_user(user)
        if not user.is_staff:
            owned = owned.filter(memberships__user=user, memberships__role=ProjectRole.OWNER)
        context["owner_projects"] = set(owned.values_list("pk", flat=True))
        return context

    def perform_create(self, serializer: WebhookSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.webhook_create(
            project=data["project"],
            kind=data["kind"],
            url=data["url"],
            event_types=data.get("event_types"),
            actor=self.request.user,
        )

    def perform_destroy(self, instance: Webhook) -> None:
        services.webhook_delete(webhook=instance, actor=self.request.user)

    @extend_schema(responses=DeliverySerializer(many=True))
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """Deliveries of this webhook, newest first, each with its attempts (outcome, status code, error, duration)."""
        webhook = self.get_object()
        deliveries = Delivery.objects.filter(source=webhook.source).prefetch_related("attempt_log")
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)


# Notifications


class NotificationSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="event.type", read_only=True)
    summary = serializers.CharField(source="event.summary", read_only=True)
    project = serializers.CharField(source="event.project.slug", read_only=True)
    request = serializers.IntegerField(source="event.request_id", read_only=True, allow_null=True)
    model = serializers.IntegerField(source="event.model_id", read_only=True, allow_null=True)

    class Meta:
        model = Notification
        fields = ["id", "type", "summary", "project", "model", "request", "created_at", "read_at"]


class NotificationReadSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(), required=False, help_text="Omit to mark all read.")


class NotificationViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Your in-app notifications of registry events, newest first."""

    serializer_class = NotificationSerializer
    filterset_class = NotificationFilterSet
    queryset = Notification.objects.none()

    def get_queryset(self) -> QuerySet[Notification]:
        return Notification.objects.filter(user=self.request.user).select_related("event__project")

    @extend_schema(request=NotificationReadSerializer, responses={200: OpenApiTypes.OBJECT})
    @action(detail=False, methods=["post"])
    def read(self, request: Request) -> Response:
        """Mark notifications read; returns how many changed."""
        payload = NotificationReadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        changed = services.notifications_mark_read(user=request.user, ids=payload.validated_data.get("ids"))
        return Response({"marked_read": changed})


router = routers.SimpleRouter()
router.register("registered-models", RegisteredModelViewSet, basename="registered-model")
router.register("model-versions", ModelVersionViewSet, basename="model-version")
router.register("promotion-requests", PromotionRequestViewSet, basename="promotion-request")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("notifications", NotificationViewSet, basename="notification")
