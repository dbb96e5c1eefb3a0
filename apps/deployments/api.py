"""The deployments API: deployments with rollout, promote, rollback, scale, traffic, events and manifests;
and the artifact endpoint the model servers' pods call with their deployment's bearer token (not a user token;
prediction events go to apps.telemetry's ingest API).

Writes to an existing deployment carry the `generation` they were based on, in the body or as `If-Match`;
a stale one answers 409, so of two concurrent changes exactly one wins.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import ProjectScopedViewSetMixin, ProjectSlugField
from apps.core.artifacts import get_artifact_store
from apps.deployments import selectors, services
from apps.deployments.choices import DeploymentBackendKind, DeploymentEnvironment, DeploymentStrategy
from apps.deployments.filters import DeploymentFilterSet
from apps.deployments.models import Deployment, DeploymentEvent
from apps.registry.models import ModelVersion
from apps.telemetry.authentication import HasIngestToken, IngestTokenAuthentication


def expected_generation(request: Request) -> int:
    """The generation a write was based on: the `generation` field, else the If-Match header."""
    value = request.data.get("generation") if hasattr(request.data, "get") else None
    if value is None:
        value = request.headers.get("If-Match", "").removeprefix("W/").strip('"') or None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise exceptions.ValidationError(
            {"generation": ["Send the generation you read (a `generation` field or an If-Match header)."]}
        ) from None


@extend_schema_field(OpenApiTypes.INT)
class ModelVersionField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self) -> QuerySet[ModelVersion]:
        return ModelVersion.objects.for_user(self.context["request"].user)


class TrafficEntrySerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    weight = serializers.IntegerField()


class DeploymentSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    model = serializers.CharField(source="registered_model.name", read_only=True)
    traffic = serializers.SerializerMethodField()
    url = serializers.CharField(
        read_only=True, allow_null=True, help_text="Where to send predictions (balanced across replicas)."
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "project",
            "name",
            "model",
            "environment",
            "backend",
            "strategy",
            "phase",
            "strategy_state",
            "status",
            "status_message",
            "replicas",
            "autoscale_min",
            "autoscale_max",
            "auto_deploy_on_approval",
            "generation",
            "applied_generation",
            "traffic",
            "observed",
            "observed_at",
            "url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_traffic(self, deployment: Deployment) -> list[dict[str, Any]]:
        return selectors.deployment_traffic(deployment)


class DeploymentCreateSerializer(serializers.Serializer):
    project = ProjectSlugField()
    name = serializers.CharField(max_length=40)
    model_version = ModelVersionField(required=False, help_text="Serve this version (100%).")
    traffic = TrafficEntrySerializer(many=True, required=False, help_text="Or an explicit split summing to 100.")
    backend = serializers.ChoiceField(choices=DeploymentBackendKind.choices, required=False)
    environment = serializers.ChoiceField(choices=DeploymentEnvironment.choices, default="staging")
    replicas = serializers.IntegerField(default=1)
    autoscale_min = serializers.IntegerField(required=False, allow_null=True, default=None)
    autoscale_max = serializers.IntegerField(required=False, allow_null=True, default=None)
    auto_deploy_on_approval = serializers.BooleanField(default=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("model_version" in data) == ("traffic" in data):
            raise serializers.ValidationError({"model_version": "Give either model_version or traffic."})
        return data


class AnalysisSerializer(serializers.Serializer):
    """A canary's analysis settings; each one left out takes the console's default."""

    window_seconds = serializers.IntegerField(required=False, min_value=1)
    max_error_rate_delta = serializers.FloatField(required=False, min_value=0, max_value=1)
    max_p99_ratio = serializers.FloatField(required=False, min_value=1)
    p99_floor_ms = serializers.FloatField(required=False, min_value=0)
    min_requests = serializers.IntegerField(required=False, min_value=1)
    failures_to_rollback = serializers.IntegerField(required=False, min_value=1)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: f"Unknown setting; choose from {', '.join(self.fields)}." for name in unknown}
                )
        return super().to_internal_value(data)


class RolloutSerializer(serializers.Serializer):
    generation = serializers.IntegerField(required=False)
    model_version = ModelVersionField()
    strategy = serializers.ChoiceField(choices=DeploymentStrategy.choices)
    traffic_percentage = serializers.IntegerField(required=False, allow_null=True, default=None)
    steps = serializers.ListField(child=serializers.IntegerField(), required=False, allow_null=True, default=None)
    analysis = AnalysisSerializer(required=False, default=dict)


class ScaleSerializer(serializers.Serializer):
    generation = serializers.IntegerField(required=False)
    replicas = serializers.IntegerField(required=False, allow_null=True, default=None)
    autoscale = serializers.BooleanField(required=False, allow_null=True, default=None)
    autoscale_min = serializers.IntegerField(required=False, allow_null=True, default=None)
    autoscale_max = serializers.IntegerField(required=False, allow_null=True, default=None)


class TrafficSerializer(serializers.Serializer):
    generation = serializers.IntegerField(required=False)
    traffic = TrafficEntrySerializer(many=True)
    shadow_model_version = serializers.IntegerField(required=False, allow_null=True, default=None)


class GenerationSerializer(serializers.Serializer):
    generation = serializers.IntegerField(required=False)
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class DeploymentEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)

    class Meta:
        model = DeploymentEvent
        fields = ["id", "kind", "message", "data", "generation", "actor", "created_at"]


class DeploymentViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Deployments of your projects. Editors create and change them; viewers read; others see nothing."""

    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilterSet
    queryset = Deployment.objects.none()

    def get_queryset(self) -> QuerySet[Deployment]:
        return self.scope(Deployment.objects.select_related("project", "registered_model")).prefetch_related(
            "targets__model_version"
        )

    def _answer(self, deployment: Deployment, code: int = status.HTTP_200_OK) -> Response:
        deployment = self.get_queryset().get(pk=deployment.pk)
        response = Response(DeploymentSerializer(deployment, context=self.get_serializer_context()).data, status=code)
        response["ETag"] = f'"{deployment.generation}"'
        return response

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._answer(self.get_object())

    @extend_schema(request=DeploymentCreateSerializer, responses={201: DeploymentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = DeploymentCreateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        deployment = services.deployment_create(
            project=data["project"],
            name=data["name"],
            actor=request.user,
            model_version=data.get("model_version"),
            traffic=data.get("traffic"),
            backend=data.get("backend"),
            environment=data["environment"],
            replicas=data["replicas"],
            autoscale_min=data["autoscale_min"],
            autoscale_max=data["autoscale_max"],
            auto_deploy_on_approval=data["auto_deploy_on_approval"],
        )
        return self._answer(deployment, status.HTTP_201_CREATED)

    def perform_destroy(self, instance: Deployment) -> None:
        services.deployment_stop(deployment=instance, actor=self.request.user)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Stop the deployment: its model servers are shut down; the row and its history stay."""
        self.perform_destroy(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=GenerationSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Run a stopped deployment again with the desired state it had (DELETE stops it)."""
        deployment = self.get_object()
        deployment = services.deployment_start(
            deployment=deployment, actor=request.user, expected_generation=expected_generation(request)
        )
        return self._answer(deployment)

    @extend_schema(request=RolloutSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollout(self, request: Request, pk: str | None = None) -> Response:
        """Roll a version out with a strategy: blue_green, canary (steps, analysis), shadow or direct."""
        deployment = self.get_object()
        generation = expected_generation(request)
        payload = RolloutSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        deployment = services.deployment_rollout(
            deployment=deployment,
            model_version=data["model_version"],
            strategy=data["strategy"],
            actor=request.user,
            expected_generation=generation,
            traffic_percentage=data["traffic_percentage"],
            steps=data["steps"],
            analysis=data["analysis"],
        )
        return self._answer(deployment)

    @extend_schema(request=GenerationSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        """Move the rollout forward now: the next canary step, the blue-green switch, or the shadow live."""
        deployment = self.get_object()
        deployment = services.deployment_promote(
            deployment=deployment, actor=request.user, expected_generation=expected_generation(request)
        )
        return self._answer(deployment)

    @extend_schema(request=GenerationSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Back to the desired state before the last rollout or traffic change."""
        deployment = self.get_object()
        generation = expected_generation(request)
        payload = GenerationSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        deployment = services.deployment_rollback(
            deployment=deployment,
            actor=request.user,
            expected_generation=generation,
            reason=payload.validated_data["reason"],
        )
        return self._answer(deployment)

    @extend_schema(request=ScaleSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def scale(self, request: Request, pk: str | None = None) -> Response:
        """A fixed number of replicas, or `autoscale: true` with `autoscale_min` and `autoscale_max`."""
        deployment = self.get_object()
        generation = expected_generation(request)
        payload = ScaleSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        deployment = services.deployment_scale(
            deployment=deployment,
            actor=request.user,
            replicas=data["replicas"],
            autoscale=data["autoscale"],
            autoscale_min=data["autoscale_min"],
            autoscale_max=data["autoscale_max"],
            expected_generation=generation,
        )
        return self._answer(deployment)

    @extend_schema(request=TrafficSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def traffic(self, request: Request, pk: str | None = None) -> Response:
        """Set the traffic split (weights summing to 100) and the shadow by hand."""
        deployment = self.get_object()
        generation = expected_generation(request)
        payload = TrafficSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        deployment = services.deployment_set_traffic(
            deployment=deployment,
            traffic=payload.validated_data["traffic"],
            shadow_model_version=payload.validated_data["shadow_model_version"],
            actor=request.user,
            expected_generation=generation,
        )
        return self._answer(deployment)

    @extend_schema(responses=DeploymentEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        """The deployment's history, newest first (paginated)."""
        deployment = self.get_object()
        events = deployment.events.select_related("actor")
        page = self.paginate_queryset(events)
        return self.get_paginated_response(DeploymentEventSerializer(page, many=True).data)

    @extend_schema(responses={(200, "application/yaml"): OpenApiResponse(description="Multi-document YAML")})
    @action(detail=True, methods=["get"])
    def manifests(self, request: Request, pk: str | None = None) -> HttpResponse:
        """Kubernetes manifests of the desired state, for GitOps (the ingest token's Secret is left out)."""
        deployment = self.get_object()
        response = HttpResponse(services.deployment_manifests(deployment), content_type="application/yaml")
        response["Content-Disposition"] = f'attachment; filename="{deployment.name}.yaml"'
        return response


# ------------------------------------------------------------------------------------------ ingest


class ArtifactFetchApi(APIView):
    """A pod's init container fetches the bundles its deployment serves (Kubernetes backend)."""

    # The same token check as telemetry's ingest API (the resolver registered in DeploymentsConfig.ready).
    authentication_classes = [IngestTokenAuthentication]
    permission_classes = [HasIngestToken]

    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(description="The bundle")})
    def get(self, request: Request, sha256: str) -> FileResponse:
        version = services.deployment_artifact_allowed(deployment_id=request.auth.deployment_id, sha256=sha256)
        if version is None:
            raise exceptions.NotFound("This deployment serves no artifact with that sha256.")
        path = get_artifact_store().verified_path(sha256)
        return FileResponse(open(path, "rb"), content_type="application/zip")  # noqa: SIM115 (closed by Django)


router = routers.SimpleRouter()
router.register("deployments", DeploymentViewSet, basename="deployment")
