"""The alerts API: rules (CRUD, the seed's defaults, a 24 h preview, notifications with their deliveries),
alerts (current state), transitions (history), silences and channels (with "send a test notification").
Viewers read; editors change; outsiders see nothing (404), including objects they name in a POST. The
services check every value and a refusal is a 400 naming its field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Model, QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.alerts import selectors, services
from apps.alerts.filters import (
    AlertChannelFilterSet,
    AlertFilterSet,
    AlertRuleFilterSet,
    AlertTransitionFilterSet,
    SilenceFilterSet,
)
from apps.alerts.models import (
    Alert,
    AlertAction,
    AlertChannel,
    AlertNotification,
    AlertRule,
    AlertTransition,
    Silence,
)
from apps.core.api import ProjectScopedViewSetMixin, ProjectSlugField
from apps.core.exceptions import NotFound, ValidationError
from apps.core.models import Project
from apps.core.notifications.api import DeliverySerializer
from apps.deployments.models import Deployment
from apps.experiments.models import PipelineRun
from apps.registry.models import RegisteredModel


class AlertChannelSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug", read_only=True)
    to = serializers.CharField(source="shown", read_only=True, help_text="The targets, secrets masked.")

    class Meta:
        model = AlertChannel
        fields = ["id", "project", "name", "kind", "to", "created_at"]


class AlertChannelCreateSerializer(serializers.Serializer):
    project = ProjectSlugField()
    name = serializers.CharField()
    kind = serializers.CharField(help_text="email, slack or webhook.")
    addresses = serializers.ListField(child=serializers.CharField(), required=False, help_text="email")
    url = serializers.CharField(required=False, help_text="slack and webhook; a public address")
    secret = serializers.CharField(required=False, help_text="webhook: the HMAC-SHA256 key")


class AlertSerializer(serializers.ModelSerializer):
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "deployment",
            "deployment_name",
            "state",
            "value",
            "threshold",
            "reason",
            "silenced",
            "active_since",
            "firing_since",
            "state_changed_at",
            "evaluated_at",
        ]


class AlertRuleSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug", read_only=True)
    condition = serializers.CharField(source="condition_display", read_only=True)
    alerts = AlertSerializer(many=True, read_only=True)

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "project",
            "deployment",
            "registered_model",
            *services.RULE_FIELDS,
            "condition",
            "channels",
            "retrain_from",
            "last_retrain_at",
            "evaluated_at",
            "alerts",
            "created_at",
            "updated_at",
        ]


class AlertRuleWriteSerializer(serializers.Serializer):
    """Rule fields as given (the service checks each one and names it when it refuses), plus relations by id."""

    project = ProjectSlugField(required=False, help_text="On create.")
    deployment = serializers.IntegerField(required=False, allow_null=True)
    registered_model = serializers.IntegerField(required=False, allow_null=True)
    channels = serializers.ListField(child=serializers.IntegerField(), required=False)
    retrain_from = serializers.IntegerField(required=False, allow_null=True, help_text="A pipeline run id.")


class AlertTransitionSerializer(serializers.ModelSerializer):
    rule = serializers.IntegerField(source="alert.rule_id", read_only=True)
    deployment = serializers.IntegerField(source="alert.deployment_id", read_only=True)

    class Meta:
        model = AlertTransition
        fields = [
            "id",
            "alert",
            "rule",
            "deployment",
            "from_state",
            "to_state",
            "value",
            "threshold",
            "reason",
            "silenced",
            "at",
        ]


class SilenceSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug", read_only=True)
    author = serializers.CharField(source="created_by.username", default=None, read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = Silence
        fields = [
            "id",
            "project",
            "rule",
            "deployment",
            "matchers",
            "starts_at",
            "ends_at",
            "comment",
            "author",
            "active",
            "created_at",
        ]


class SilenceCreateSerializer(serializers.Serializer):
    project = ProjectSlugField()
    rule = serializers.IntegerField(required=False)
    deployment = serializers.IntegerField(required=False)
    matchers = serializers.DictField(child=serializers.CharField(), required=False)
    starts_at = serializers.DateTimeField(required=False)
    ends_at = serializers.DateTimeField(required=False)
    hours = serializers.FloatField(required=False, min_value=0.01, help_text="Or a duration from now.")
    comment = serializers.CharField()


class AlertNotificationSerializer(serializers.ModelSerializer):
    deliveries = serializers.SerializerMethodField()

    class Meta:
        model = AlertNotification
        fields = ["id", "kind", "key", "alerts", "created_at", "deliveries"]

    def get_deliveries(self, notification: AlertNotification) -> list[dict]:
        return DeliverySerializer(self.context["deliveries"].get(notification.pk, []), many=True).data


class AlertActionSerializer(serializers.ModelSerializer):
    deployment = serializers.IntegerField(source="alert.deployment_id", read_only=True, allow_null=True)
    abtest_status = serializers.CharField(source="abtest.status", read_only=True, allow_null=True)

    class Meta:
        model = AlertAction
        fields = [
            "id",
            "alert",
            "deployment",
            "pipeline_run",
            "promotion_request",
            "abtest",
            "abtest_status",
            "error",
            "created_at",
        ]


class DefaultsSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    channels = serializers.ListField(child=serializers.IntegerField(), required=False)


def _scoped(model: type[Model], user: object, pk: Any, field: str, path: str = "project") -> Any:
    """An object a POST names, among the user's projects; others are as absent as missing ones (404)."""
    if pk is None:
        return None
    found = model.objects.filter(**{f"{path}__in": Project.objects.for_user(user)}, pk=pk).first()
    if found is None:
        raise NotFound(f"No such {field.replace('_', ' ')}.", field=field)
    return found


def _channels(user: object, ids: list[int] | None) -> list[AlertChannel] | None:
    if ids is None:
        return None
    return [_scoped(AlertChannel, user, pk, "channels") for pk in ids]


WRITE_RELATIONS = ("project", "deployment", "registered_model", "channels", "retrain_from")


def _rule_data(request: Request) -> dict[str, Any]:
    """The rule's fields as sent, unknown keys included: the service refuses them (a typo would otherwise be
    ignored) after its role check, so a viewer learns nothing from a 400."""
    return {key: request.data[key] for key in request.data if key not in WRITE_RELATIONS}


class AlertRuleViewSet(ProjectScopedViewSetMixin, viewsets.ModelViewSet):
    """Alert rules of your projects with their alerts' current state. POST/PATCH/DELETE: editors."""

    serializer_class = AlertRuleSerializer
    filterset_class = AlertRuleFilterSet
    queryset = AlertRule.objects.none()
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self) -> QuerySet[AlertRule]:
        return self.scope(
            AlertRule.objects.select_related("project").prefetch_related("channels", "alerts__deployment")
        )

    def _relations(self, payload: dict[str, Any]) -> dict[str, Any]:
        user = self.request.user
        relations: dict[str, Any] = {}
        if "channels" in payload:
            relations["channels"] = _channels(user, payload["channels"])
        if "retrain_from" in payload:
            relations["retrain_from"] = _scoped(PipelineRun, user, payload["retrain_from"], "retrain_from") or False
        return relations

    @extend_schema(request=AlertRuleWriteSerializer, responses={201: AlertRuleSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = AlertRuleWriteSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        if "project" not in data:
            raise ValidationError("This field is required.", field="project")
        relations = self._relations(data)
        if relations.get("retrain_from") is False:
            relations["retrain_from"] = None
        rule = services.alert_rule_create(
            project=data["project"],
            actor=request.user,
            deployment=_scoped(Deployment, request.user, data.get("deployment"), "deployment"),
            registered_model=_scoped(RegisteredModel, request.user, data.get("registered_model"), "registered_model"),
            **relations,
            **_rule_data(request),
        )
        return Response(AlertRuleSerializer(self.get_queryset().get(pk=rule.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=AlertRuleWriteSerializer, responses={200: AlertRuleSerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        rule = self.get_object()
        payload = AlertRuleWriteSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        services.alert_rule_update(
            rule=rule, actor=request.user, **self._relations(payload.validated_data), **_rule_data(request)
        )
        return Response(AlertRuleSerializer(self.get_queryset().get(pk=rule.pk)).data)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.partial_update(request, *args, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.alert_rule_delete(rule=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=DefaultsSerializer, responses={201: AlertRuleSerializer(many=True)})
    @action(detail=False, methods=["post"])
    def defaults(self, request: Request) -> Response:
        """The seed's ready-made rules for a deployment in one call (the ones that exist already are skipped)."""
        payload = DefaultsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        deployment = _scoped(Deployment, request.user, payload.validated_data["deployment"], "deployment")
        rules = services.alert_rules_create_defaults(
            deployment=deployment,
            actor=request.user,
            channels=_channels(request.user, payload.validated_data.get("channels")),
        )
        created = self.get_queryset().filter(pk__in=[rule.pk for rule in rules])
        return Response(AlertRuleSerializer(created, many=True).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: AlertNotificationSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def notifications(self, request: Request, pk: str | None = None) -> Response:
        """The rule's last 50 notifications, each with its deliveries and every attempt."""
        notifications = list(self.get_object().notifications.all()[:50])
        context = {"deliveries": selectors.notification_deliveries(notifications)}
        return Response(AlertNotificationSerializer(notifications, many=True, context=context).data)

    @extend_schema(responses={200: AlertActionSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def actions(self, request: Request, pk: str | None = None) -> Response:
        """The closed loop: the rule's last 50 retraining runs, each with its promotion request and A/B test."""
        return Response(AlertActionSerializer(selectors.rule_actions(self.get_object())[:50], many=True).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """The rule's figure on its deployment over the last 24 h (48 points) with its threshold."""
        rule = self.get_object()
        if rule.deployment is None:
            raise ValidationError("A preview needs a rule on one deployment.", field="deployment")
        points = selectors.figure_preview(
            figure=rule.figure,
            column=rule.column,
            deployment=rule.deployment,
            window=timedelta(seconds=rule.window_seconds),
            now=timezone.now(),
        )
        return Response({"threshold": rule.threshold, "points": points})


class AlertViewSet(
    ProjectScopedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Alerts (one per rule and deployment) with their current state."""

    project_path = "rule__project"
    serializer_class = AlertSerializer
    filterset_class = AlertFilterSet
    queryset = Alert.objects.none()

    def get_queryset(self) -> QuerySet[Alert]:
        return self.scope(Alert.objects.select_related("deployment"))


class AlertTransitionViewSet(ProjectScopedViewSetMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every state change of every alert, newest first: per rule (`rule=`) or per deployment (`deployment=`)."""

    project_path = "alert__rule__project"
    serializer_class = AlertTransitionSerializer
    filterset_class = AlertTransitionFilterSet
    queryset = AlertTransition.objects.none()

    def get_queryset(self) -> QuerySet[AlertTransition]:
        return self.scope(AlertTransition.objects.select_related("alert"))


class SilenceViewSet(
    ProjectScopedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Silences; POST creates one (editors), POST …/expire/ ends it now."""

    serializer_class = SilenceSerializer
    filterset_class = SilenceFilterSet
    queryset = Silence.objects.none()

    def get_queryset(self) -> QuerySet[Silence]:
        return self.scope(Silence.objects.select_related("project", "created_by"))

    @extend_schema(request=SilenceCreateSerializer, responses={201: SilenceSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = SilenceCreateSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        starts_at = data.get("starts_at") or timezone.now()
        ends_at = data.get("ends_at")
        if ends_at is None and "hours" in data:
            ends_at = starts_at + timedelta(hours=data["hours"])
        silence = services.silence_create(
            project=data["project"],
            actor=request.user,
            comment=data["comment"],
            starts_at=starts_at,
            ends_at=ends_at,
            rule=_scoped(AlertRule, request.user, data.get("rule"), "rule"),
            deployment=_scoped(Deployment, request.user, data.get("deployment"), "deployment"),
            matchers=data.get("matchers"),
        )
        return Response(SilenceSerializer(silence).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: SilenceSerializer})
    @action(detail=True, methods=["post"])
    def expire(self, request: Request, pk: str | None = None) -> Response:
        silence = services.silence_expire(silence=self.get_object(), actor=request.user)
        return Response(SilenceSerializer(silence).data)


class AlertChannelViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Where alerts go: email addresses, a Slack incoming webhook or a signed webhook (secrets never shown)."""

    serializer_class = AlertChannelSerializer
    filterset_class = AlertChannelFilterSet
    queryset = AlertChannel.objects.none()

    def get_queryset(self) -> QuerySet[AlertChannel]:
        return self.scope(AlertChannel.objects.select_related("project"))

    @extend_schema(request=AlertChannelCreateSerializer, responses={201: AlertChannelSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = AlertChannelCreateSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        config = {key: data[key] for key in ("addresses", "url", "secret") if key in data}
        channel = services.alert_channel_create(
            project=data["project"], actor=request.user, name=data["name"], kind=data["kind"], config=config
        )
        return Response(AlertChannelSerializer(channel).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: AlertChannel) -> None:
        services.alert_channel_delete(channel=instance, actor=self.request.user)

    @extend_schema(request=None, responses={202: AlertNotificationSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send a test notification to the channel now; its deliveries (and attempts) are in the answer's list."""
        notification = services.alert_channel_test(channel=self.get_object(), actor=request.user)
        context = {"deliveries": selectors.notification_deliveries([notification])}
        return Response(
            AlertNotificationSerializer(notification, context=context).data, status=status.HTTP_202_ACCEPTED
        )


router = routers.SimpleRouter()
router.register("alert-rules", AlertRuleViewSet, basename="alert-rule")
router.register("alerts", AlertViewSet, basename="alert")
router.register("alert-transitions", AlertTransitionViewSet, basename="alert-transition")
router.register("alert-silences", SilenceViewSet, basename="alert-silence")
router.register("alert-channels", AlertChannelViewSet, basename="alert-channel")
