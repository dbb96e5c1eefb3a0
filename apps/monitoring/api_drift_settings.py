"""GET/PUT /api/v1/drift-settings/<deployment id>/: how a deployment's drift reports test (viewers read, editors
change; outsiders get 404). A bad value is a 400 naming its field, e.g. `columns.age.threshold`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict, NotFound
from apps.core.permissions import require_project_role
from apps.deployments.models import Deployment
from apps.monitoring import services
from apps.monitoring.drift_settings import drift_settings_of, drift_settings_update, output_kinds
from apps.monitoring.models import DriftSettings
from worker.monitoring.drift import DEFAULT_THRESHOLDS


class DriftSettingsSerializer(serializers.ModelSerializer):
    class Meta:
        model = DriftSettings
        fields = ["columns", "drift_share", "prediction_drift", "updated_at"]


class DriftSettingsUpdateSerializer(serializers.Serializer):
    """Every field is optional: what is left out stays as it is. Checked by the service (400 naming the field)."""

    columns = serializers.JSONField(
        required=False, help_text='Column -> {"test": ks|chisquare|z|wasserstein|jensenshannon|psi, "threshold": n}.'
    )
    drift_share = serializers.JSONField(required=False, help_text="Dataset drift from this share of columns, (0, 1].")
    prediction_drift = serializers.JSONField(required=False, help_text="Test the predictions and probabilities.")


def _deployment(request: Request, deployment_id: int) -> Deployment:
    deployment = (
        Deployment.objects.for_user(request.user)
        .select_related("project", "registered_model")
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None:
        raise NotFound("No such deployment.")
    return deployment


def settings_body(deployment: Deployment) -> dict[str, Any]:
    """The settings, and the columns they may name with how each is tested (from the live version)."""
    body = DriftSettingsSerializer(drift_settings_of(deployment)).data
    try:
        version = services.live_version(deployment)
    except Conflict:
        body["available_columns"] = {}
    else:
        body["available_columns"] = {**services.feature_kinds(version), **output_kinds(version)}
    body["default_thresholds"] = DEFAULT_THRESHOLDS
    return body


class DriftSettingsApi(APIView):
    @extend_schema(responses={200: DriftSettingsSerializer})
    def get(self, request: Request, deployment_id: int) -> Response:
        return Response(settings_body(_deployment(request, deployment_id)))

    @extend_schema(request=DriftSettingsUpdateSerializer, responses={200: DriftSettingsSerializer})
    def put(self, request: Request, deployment_id: int) -> Response:
        deployment = _deployment(request, deployment_id)
        # Before anything about the deployment or the body: a viewer learns only that it may not change them.
        require_project_role(request.user, deployment.project, ProjectRole.EDITOR)
        payload = DriftSettingsUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        drift_settings_update(
            deployment=deployment,
            actor=request.user,
            version=services.live_version(deployment),
            columns=data.get("columns"),
            drift_share=data.get("drift_share"),
            prediction_drift=data.get("prediction_drift"),
        )
        return Response(settings_body(deployment))

    patch = put
