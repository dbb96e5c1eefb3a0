from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core import services
from apps.core.choices import ProjectRole
from apps.core.filters import APITokenFilterSet, AuditEntryFilterSet, ProjectFilterSet
from apps.core.models import APIToken, AuditEntry, Membership, Project


class ProjectField(serializers.SlugRelatedField):
    """A project given by slug, among those the requesting user belongs to (others look absent)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("slug_field", "slug")
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet[Project]:
        return Project.objects.for_user(self.context["request"].user)


@extend_schema_field(OpenApiTypes.STR)
class ProjectSlugField(ProjectField):
    """A project slug in a serializer without a model (the schema cannot derive its type)."""


class ProjectScopedViewSetMixin:
    """Limit a viewset to objects in the user's projects; `project_path` is the lookup to the project."""

    project_path = "project"

    def scope(self, queryset: QuerySet) -> QuerySet:
        projects = Project.objects.for_user(self.request.user)
        return queryset.filter(**{f"{self.project_path}__in": projects})


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "slug",
            "description",
            "required_approvals",
            "prediction_log_retention_days",
            "prediction_rollup_retention_days",
            "created_at",
            "role",
        ]
        read_only_fields = ["slug", "created_at"]

    def get_role(self, project: Project) -> str | None:
        user = self.context["request"].user
        if user.is_staff:
            return ProjectRole.OWNER
        return next((m.role for m in project.memberships.all() if m.user_id == user.id), None)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["id", "username", "role", "created_at"]
        read_only_fields = ["created_at"]


class MembershipWriteSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=ProjectRole.choices)


class ProjectViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Projects (workspaces) you belong to. Any signed-in user may create one and becomes its owner."""

    serializer_class = ProjectSerializer
    filterset_class = ProjectFilterSet
    lookup_field = "slug"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Project]:
        return Project.objects.for_user(self.request.user).prefetch_related("memberships")

    def perform_create(self, serializer: ProjectSerializer) -> None:
        serializer.instance = services.project_create(
            name=serializer.validated_data["name"],
            description=serializer.validated_data.get("description", ""),
            owner=self.request.user,
        )

    def perform_update(self, serializer: ProjectSerializer) -> None:
        serializer.instance = services.project_update(
            project=serializer.instance,
            actor=self.request.user,
            description=serializer.validated_data.get("description"),
            required_approvals=serializer.validated_data.get("required_approvals"),
            prediction_log_retention_days=serializer.validated_data.get("prediction_log_retention_days"),
            prediction_rollup_retention_days=serializer.validated_data.get("prediction_rollup_retention_days"),
        )

    @extend_schema(request=MembershipWriteSerializer, responses=MembershipSerializer(many=True))
    @action(detail=True, methods=["get", "post"])
    def members(self, request: Request, slug: str | None = None) -> Response:
        """List members, or (owners) add a member or change a member's role."""
        project = self.get_object()
        if request.method == "POST":
            payload = MembershipWriteSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            services.membership_set(project=project, actor=request.user, **payload.validated_data)
        members = project.memberships.select_related("user").order_by("user__username")
        return Response(MembershipSerializer(members, many=True).data)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<username>[^/]+)")
    def remove_member(self, request: Request, slug: str | None = None, username: str = "") -> Response:
        project = self.get_object()
        membership = get_object_or_404(Membership, project=project, user__username=username)
        services.membership_remove(membership=membership, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class APITokenSerializer(serializers.ModelSerializer):
    key = serializers.SerializerMethodField(help_text="Shown once, in the response that creates the token.")

    class Meta:
        model = APIToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at", "key"]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]

    def get_key(self, token: APIToken) -> str | None:
        return self.context.get("key")


class APITokenViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Your personal API tokens. DELETE revokes a token; it stays listed as revoked."""

    serializer_class = APITokenSerializer
    filterset_class = APITokenFilterSet
    queryset = APIToken.objects.none()

    def get_queryset(self) -> QuerySet[APIToken]:
        return APIToken.objects.filter(user=self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, key = services.api_token_create(user=request.user, name=serializer.validated_data["name"])
        return Response(APITokenSerializer(token, context={"key": key}).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: APIToken) -> None:
        services.api_token_revoke(token=instance, actor=self.request.user)


class AuditEntrySerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "project",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "before",
            "after",
            "message",
            "ip_address",
            "created_at",
        ]


class AuditEntryViewSet(ProjectScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """The audit log of your projects, filtered by `project`, `action`, `object_type` and `object_id`."""

    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
    queryset = AuditEntry.objects.none()

    def get_queryset(self) -> QuerySet[AuditEntry]:
        return self.scope(AuditEntry.objects.select_related("project"))


router = routers.SimpleRouter()
router.register("projects", ProjectViewSet, basename="project")
router.register("tokens", APITokenViewSet, basename="token")
router.register("audit", AuditEntryViewSet, basename="audit")
