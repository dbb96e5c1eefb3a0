"""The A/B test API (docs/abtests.md, "Using A/B tests"): tests (list, create, detail), start, stop, outcomes,
readouts (latest, compute, history), promote the winner, and the power calculator.

Any member reads; editors and above create, start, stop, post outcomes, compute readouts and promote; outsiders
get 404 (the services check roles, the viewset scopes the queryset). Personal API tokens (`Authorization:
Token …`) work as for feedback.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, routers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.abtests import selectors, services
from apps.abtests.choices import ABTestMetric, AssignmentKey
from apps.abtests.filters import ABTestFilterSet
from apps.abtests.models import ABTest, ABTestArm, ABTestReadout
from apps.core.api import ProjectScopedViewSetMixin
from apps.core.exceptions import NotFound
from apps.deployments.models import Deployment
from apps.telemetry.api import OrjsonParser


class ArmSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="model_version.number", read_only=True)
    name = serializers.CharField(read_only=True)

    class Meta:
        model = ABTestArm
        fields = ["model_version", "version", "name", "weight", "position"]


class ReadoutSerializer(serializers.ModelSerializer):
    class Meta:
        model = ABTestReadout
        fields = ["id", "as_of", "decision", "reason", "srm_p_value", "srm_invalid", "result", "computed_at"]


class ABTestSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="deployment.project.slug", read_only=True)
    arms = ArmSerializer(many=True, read_only=True)

    class Meta:
        model = ABTest
        fields = [
            "id",
            "project",
            "deployment",
            "name",
            "description",
            "status",
            "arms",
            "primary_metric",
            "guardrails",
            "mde",
            "mde_relative",
            "alpha",
            "power",
            "baseline",
            "baseline_sd",
            "sequential",
            "planned_sample_size",
            "planned_duration_days",
            "assignment_key",
            "decision",
            "decision_reason",
            "winner",
            "promotion_request",
            "created_at",
            "started_at",
            "stopped_at",
        ]


class GuardrailSerializer(serializers.Serializer):
    metric = serializers.CharField()
    margin = serializers.FloatField(required=False, default=0.0)


class ABTestCreateSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    name = serializers.CharField(allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    control = serializers.IntegerField(help_text="Model version id of the control (of the deployment's model).")
    treatments = serializers.ListField(child=serializers.IntegerField(), help_text="Model version ids.")
    split = serializers.ListField(
        child=serializers.IntegerField(), help_text="Percent per arm, control first; sums to 100."
    )
    primary_metric = serializers.ChoiceField(choices=ABTestMetric.choices)
    mde = serializers.FloatField(help_text="Minimum detectable effect (absolute; relative with mde_relative).")
    mde_relative = serializers.BooleanField(required=False, default=False)
    baseline = serializers.FloatField(help_text="Expected rate or mean of the control.")
    baseline_sd = serializers.FloatField(required=False, allow_null=True, default=None)
    alpha = serializers.FloatField(required=False, default=0.05)
    power = serializers.FloatField(required=False, default=0.8)
    sequential = serializers.BooleanField(required=False, default=True)
    planned_sample_size = serializers.IntegerField(required=False, allow_null=True, default=None)
    guardrails = GuardrailSerializer(many=True, required=False, default=list)
    assignment_key = serializers.ChoiceField(choices=AssignmentKey.choices, required=False, default="header")


class PowerSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    primary_metric = serializers.ChoiceField(choices=ABTestMetric.choices)
    baseline = serializers.FloatField()
    mde = serializers.FloatField()
    mde_relative = serializers.BooleanField(required=False, default=False)
    baseline_sd = serializers.FloatField(required=False, allow_null=True, default=None)
    alpha = serializers.FloatField(required=False, default=0.05)
    power = serializers.FloatField(required=False, default=0.8)
    sequential = serializers.BooleanField(required=False, default=True)
    split = serializers.ListField(child=serializers.FloatField(), required=False, default=[50, 50])


class StartSerializer(serializers.Serializer):
    expected_generation = serializers.IntegerField(required=False, allow_null=True, default=None)


class StopSerializer(serializers.Serializer):
    winner = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="Model version id; default: the readout's."
    )
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class OutcomeItemSerializer(serializers.Serializer):
    """The documented shape of one outcome (the service checks items one by one and reports each refusal)."""

    request_id = serializers.CharField(required=False, help_text="The X-Request-Id the model server answered.")
    assignment_key = serializers.CharField(required=False, help_text="The X-Request-Key (or request_key field).")
    conversion = serializers.IntegerField(required=False, help_text="0 or 1 (primary metric conversion).")
    value = serializers.FloatField(required=False, help_text="A number, e.g. revenue (primary metric value).")


class OutcomeResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    replaced = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    unknown = serializers.IntegerField()
    unknown_ids = serializers.ListField(child=serializers.CharField())
    errors = serializers.ListField(child=serializers.DictField())


class PromoteSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="")


def deployment_for(user: Any, pk: int) -> Deployment:
    deployment = Deployment.objects.for_user(user).select_related("project").filter(pk=pk).first()
    if deployment is None:
        raise NotFound("No such deployment.", field="deployment")
    return deployment


class ABTestViewSet(
    ProjectScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """A/B tests of your projects' deployments. POST creates a draft (editors)."""

    project_path = "deployment__project"
    serializer_class = ABTestSerializer
    filterset_class = ABTestFilterSet
    queryset = ABTest.objects.none()

    def get_queryset(self) -> QuerySet[ABTest]:
        return self.scope(ABTest.objects.select_related("deployment__project").prefetch_related("arms__model_version"))

    def _answer(self, abtest: ABTest, code: int = status.HTTP_200_OK) -> Response:
        return Response(ABTestSerializer(self.get_queryset().get(pk=abtest.pk)).data, status=code)

    @extend_schema(request=ABTestCreateSerializer, responses={201: ABTestSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = ABTestCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        deployment = deployment_for(request.user, data.pop("deployment"))
        data["power_"] = data.pop("power")
        abtest = services.abtest_create(deployment=deployment, actor=request.user, **data)
        return self._answer(abtest, status.HTTP_201_CREATED)

    @extend_schema(request=StartSerializer, responses=ABTestSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Set the deployment's split to the arms' weights and start the test."""
        payload = StartSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        generation = payload.validated_data["expected_generation"]
        abtest = services.abtest_start(abtest=self.get_object(), actor=request.user, expected_generation=generation)
        return self._answer(abtest)

    @extend_schema(request=StopSerializer, responses=ABTestSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Final readout, decision recorded, all traffic to the winner (or the control)."""
        payload = StopSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        abtest = services.abtest_stop(abtest=self.get_object(), actor=request.user, **payload.validated_data)
        return self._answer(abtest)

    @extend_schema(
        methods=["GET"], responses={200: ReadoutSerializer, 404: OpenApiResponse(description="no readout yet")}
    )
    @extend_schema(methods=["POST"], request=None, responses={201: ReadoutSerializer})
    @action(detail=True, methods=["get", "post"])
    def readout(self, request: Request, pk: str | None = None) -> Response:
        """GET the latest readout; POST computes one now (editors)."""
        abtest = self.get_object()
        if request.method == "POST":
            created = services.abtest_readout_compute(abtest=abtest, actor=request.user)
            return Response(ReadoutSerializer(created).data, status=status.HTTP_201_CREATED)
        latest = selectors.latest_readout(abtest)
        if latest is None:
            raise NotFound("No readout yet: start the test, then compute one (POST).")
        return Response(ReadoutSerializer(latest).data)

    @extend_schema(responses=ReadoutSerializer(many=True))
    @action(detail=True, methods=["get"])
    def readouts(self, request: Request, pk: str | None = None) -> Response:
        """Every readout, oldest first (the cumulative lift over time)."""
        rows = selectors.readouts(self.get_object()).order_by("as_of", "id")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ReadoutSerializer(page, many=True).data)

    @extend_schema(request=OutcomeItemSerializer(many=True), responses=OutcomeResultSerializer)
    @action(detail=True, methods=["post"], parser_classes=[OrjsonParser])
    def outcomes(self, request: Request, pk: str | None = None) -> Response:
        """Business outcomes: a JSON list of {request_id | assignment_key, conversion | value}; idempotent.
        Unknown ids are counted and listed; a malformed item is refused alone (index and field in `errors`)."""
        result = services.abtest_outcomes_record(abtest=self.get_object(), actor=request.user, items=request.data)
        return Response(dataclasses.asdict(result))

    @extend_schema(request=PromoteSerializer, responses={201: OpenApiResponse(description="the promotion request")})
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        """Open a promotion request to production for the winner, with the readout attached (approvers decide)."""
        payload = PromoteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        promotion = services.abtest_promote_winner(
            abtest=self.get_object(), actor=request.user, comment=payload.validated_data["comment"]
        )
        return Response(
            {
                "promotion_request": promotion.pk,
                "version": promotion.version_id,
                "target_stage": promotion.target_stage,
                "status": promotion.status,
                "url": promotion.get_absolute_url(),
            },
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=PowerSerializer, responses={200: OpenApiResponse(description="the sample plan")})
    @action(detail=False, methods=["post"])
    def power(self, request: Request) -> Response:
        """The power calculator: units per arm and expected days at the deployment's traffic (any member)."""
        payload = PowerSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        deployment = deployment_for(request.user, data.pop("deployment"))
        data["power_"] = data.pop("power")
        plan = services.abtest_power_plan(deployment=deployment, **data)
        return Response({**plan.to_dict(), "traffic_per_day": selectors.traffic_per_day(deployment_id=deployment.pk)})


router = routers.SimpleRouter()
router.register("abtests", ABTestViewSet, basename="abtest")
