"""Telemetry's API: model servers POST `{"events": [...]}` with their deployment's token (see authentication);
users POST ground truth (feedback) with their personal API token, checked against their role in the project."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.exceptions import NotFound, ValidationError
from apps.core.models import Project
from apps.telemetry import services
from apps.telemetry.authentication import HasIngestToken, IngestTokenAuthentication


class OrjsonParser(parsers.JSONParser):
    """JSON through orjson: a batch of 500 events parses several times faster than with the json module."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        try:
            return orjson.loads(stream.read())
        except orjson.JSONDecodeError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class IngestBusy(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The batch raced with a copy of itself; send it again."
    default_code = "retry"


class IngestEventsSerializer(serializers.Serializer):
    events = serializers.ListField(child=serializers.DictField())


class PredictionIngestApi(APIView):
    """Store a batch of prediction events; idempotent (a re-sent event is not stored twice).

    Answers 202 `{"accepted": n}` with n the events newly stored, plus `"rejected": [{"index", "request_id",
    "field", "error"}, ...]` for events refused alone (an impossible timestamp, a version_id that is not one of
    the deployment's model's versions) while the rest was stored; 400 naming `events` for a malformed batch,
    and 503 when the batch raced with a copy of itself (model servers retry 503s).
    """

    authentication_classes = [IngestTokenAuthentication]
    permission_classes = [HasIngestToken]
    parser_classes = [OrjsonParser]

    @extend_schema(request=IngestEventsSerializer, responses={202: OpenApiResponse(description="accepted count")})
    def post(self, request: Request) -> Response:
        events = request.data.get("events") if isinstance(request.data, dict) else None
        try:
            result = services.predictions_ingest(source=request.auth, events=events)
        except services.IngestRetry as exc:
            raise IngestBusy() from exc
        body: dict[str, Any] = {"accepted": result.accepted}
        if result.rejected:
            body["rejected"] = result.rejected
        return Response(body, status=status.HTTP_202_ACCEPTED)


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

    @extend_schema(responses={200: OpenApiResponse(description="stored, replaced, unknown, unknown_ids, errors")})
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
