"""Telemetry's API: model servers POST `{"events": [...]}` with their deployment's token (see authentication);
users POST ground truth (feedback) with their personal API token, checked against their role in the project."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.choices import ProjectRole
from apps.core.exceptions import NotFound, ServiceUnavailable, ValidationError
from apps.core.models import Project
from apps.core.permissions import has_project_role
from apps.telemetry import selectors, services
from apps.telemetry.authentication import (
    HasIngestToken,
    IngestTokenAuthentication,
    bearer_token,
    ingest_source_for_token,
)
from apps.telemetry.models import PredictionRollup


class OrjsonParser(parsers.JSONParser):
    """JSON through orjson: a batch of 500 events parses several times faster than with the json module."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return orjson.loads(stream.read())
        except orjson.JSONDecodeError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class IngestEventsSerializer(serializers.Serializer):
    events = serializers.ListField(child=serializers.DictField())
    server = serializers.CharField(required=False, help_text="The sending model server process (host:pid).")
    dropped = serializers.DictField(
        child=serializers.IntegerField(min_value=0), required=False, help_text="Events dropped so far, by reason."
    )
    buffered = serializers.IntegerField(min_value=0, required=False, help_text="Events waiting to be shipped.")


class PredictionIngestApi(APIView):
    """Store a batch of prediction events; idempotent (a re-sent event is not stored twice).

    Answers 202 `{"accepted": n}` with n the events newly stored, plus `"rejected": [{"index", "request_id",
    "field", "error"}, ...]` for events refused alone (an impossible timestamp, a version_id that is not one of
    the deployment's model's versions) while the rest was stored; 400 naming `events` for a malformed batch,
    and 503 when the batch raced with a copy of itself (model servers retry 503s).

    A model server also sends its shipping report with each batch: `server` (its process), `dropped` (events
    it dropped so far, by reason) and `buffered` (events waiting); the system health page shows them.
    """

    authentication_classes = [IngestTokenAuthentication]
    permission_classes = [HasIngestToken]
    parser_classes = [OrjsonParser]

    @extend_schema(request=IngestEventsSerializer, responses={202: OpenApiResponse(description="accepted count")})
    def post(self, request: Request) -> Response:
        events = request.data.get("events") if isinstance(request.data, dict) else None
        source = request.auth
        if isinstance(request.data, dict) and "server" in request.data:
            services.shipping_report_record(
                source=source,
                server=request.data["server"],
                dropped=request.data.get("dropped", {}),
                buffered=request.data.get("buffered", 0),
            )
        try:
            result = services.predictions_ingest(
                source=source,
                events=events,
                fresh_source=lambda: ingest_source_for_token(bearer_token(request) or "", fresh=True),
            )
        except services.IngestRetry as exc:
            raise ServiceUnavailable("The batch raced with a copy of itself; send it again.") from exc
        body: dict[str, Any] = {"accepted": result.accepted}
        if result.rejected:
            body["rejected"] = result.rejected
        return Response(body, status=status.HTTP_202_ACCEPTED)


class FeedbackItemSerializer(serializers.Serializer):
    """The documented shape of one feedback item (the service checks items one by one)."""

    request_id = serializers.CharField(max_length=64)
    label = serializers.JSONField(required=False, help_text="A class, or a list with one per row.")
    value = serializers.FloatField(required=False, help_text="A regression target (or a list, one per row).")


class FeedbackCsvSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV with columns request_id and label (or request_id and value).")


class FeedbackResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    replaced = serializers.IntegerField()
    unknown = serializers.IntegerField()
    unknown_ids = serializers.ListField(child=serializers.CharField())
    errors = serializers.ListField(child=serializers.DictField())


def _optional_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ValidationError("must be a positive integer", field=name)
    return int(raw)


class FeedbackApi(APIView):
    """Ground truth for logged predictions: `POST /api/v1/feedback/?project=<slug>[&deployment_id=N]`.

    The body is a JSON list of `{request_id, label}` or `{request_id, value}`, or a multipart CSV `file`
    (columns request_id and label, or request_id and value). Personal API token (or session); editors and
    above. Answers 200 `{"stored", "replaced", "unknown", "unknown_ids", "errors"}`.
    """

    parser_classes = [OrjsonParser, parsers.MultiPartParser]

    @extend_schema(
        request={
            "application/json": FeedbackItemSerializer(many=True),
            "multipart/form-data": FeedbackCsvSerializer,
        },
        parameters=[
            OpenApiParameter("project", str, required=True, description="The project's slug."),
            OpenApiParameter("deployment_id", int, description="Look request ids up in this deployment only."),
        ],
        responses={200: FeedbackResultSerializer},
    )
    def post(self, request: Request) -> Response:
        slug = request.query_params.get("project")
        if not slug:
            raise ValidationError("required: the slug of the project the predictions belong to", field="project")
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            raise NotFound("No such project.")
        deployment_id = _optional_int(request, "deployment_id")
        if request.content_type.startswith("multipart/"):
            result = services.prediction_labels_store(
                actor=request.user, project=project, csv_file=request.FILES.get("file"), deployment_id=deployment_id
            )
        else:
            result = services.prediction_labels_store(
                actor=request.user, project=project, items=request.data, deployment_id=deployment_id
            )
        return Response(dataclasses.asdict(result))


# `window`: hours or days, up to the raw rows' longest useful life (the default retention is 30 days).
WINDOW_PATTERN = re.compile(r"^([1-9][0-9]*)([hd])$")
MAX_WINDOW = timedelta(days=90)


def parse_window(raw: str) -> timedelta:
    match = WINDOW_PATTERN.match(raw)
    window = timedelta(**{"hours" if match[2] == "h" else "days": int(match[1])}) if match else None
    if window is None or window > MAX_WINDOW:
        raise ValidationError("a duration such as 1h, 24h, 7d or 30d, at most 90d", field="window")
    return window


def _moment(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    moment = parse_datetime(raw)
    if moment is None:
        raise ValidationError("an ISO 8601 date and time, such as 2026-11-28T09:00:00Z", field=name)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


def _plain(value: Any) -> Any:
    """A dataclass tree as JSON-able data (numpy arrays as lists)."""
    if dataclasses.is_dataclass(value):
        return {item.name: _plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class DeploymentPerformanceApi(APIView):
    """Performance per model version from labelled predictions, with the label-free estimate for the rest:
    `GET /api/v1/deployments/{id}/performance/?window=24h[&reference_since=…&reference_until=…]`.

    Telemetry knows a deployment only by id, so the project is the one its logged predictions belong to;
    any member of it may read; everyone else (and a deployment that never logged) gets 404.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("window", str, description="1h … 90d, in hours or days (default 24h)."),
            OpenApiParameter("reference_since", OpenApiTypes.DATETIME, description="CBPE reference window start."),
            OpenApiParameter("reference_until", OpenApiTypes.DATETIME, description="CBPE reference window end."),
        ],
        responses={200: OpenApiResponse(description="window, and per version: counts, metrics and the estimate")},
    )
    def get(self, request: Request, deployment_id: int) -> Response:
        project_id = (
            PredictionRollup.objects.filter(deployment_id=deployment_id).values_list("project_id", flat=True).first()
        )
        project = Project.objects.filter(pk=project_id).first() if project_id is not None else None
        if project is None or not has_project_role(request.user, project, ProjectRole.VIEWER):
            raise NotFound(f"No predictions are logged for deployment {deployment_id} in your projects.")
        window = parse_window(request.query_params.get("window", "24h"))
        reference_since, reference_until = _moment(request, "reference_since"), _moment(request, "reference_until")
        if (reference_since is None) != (reference_until is None):
            raise ValidationError("give reference_since and reference_until together", field="reference_until")
        if reference_since is not None and reference_since >= reference_until:
            raise ValidationError("must be later than reference_since", field="reference_until")
        until = timezone.now()
        versions = selectors.performance_by_version(
            deployment_id=deployment_id,
            project_id=project.pk,
            since=until - window,
            until=until,
            reference_since=reference_since,
            reference_until=reference_until,
        )
        return Response(
            {
                "deployment_id": deployment_id,
                "since": until - window,
                "until": until,
                "row_limit": selectors.PERFORMANCE_ROW_LIMIT,
                "versions": [_plain(version) for version in versions],
            }
        )
