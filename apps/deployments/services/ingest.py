"""Ingest of the prediction events that the deployments' model servers ship."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.core.exceptions import Conflict
from apps.deployments.models import Deployment, PredictionLog

MAX_EVENTS_PER_BATCH = 5000
INGEST_BATCH_SIZE = 500


def _text(value: Any, limit: int) -> str:
    return str(value)[:limit] if value is not None else ""


def _input_rows(inputs: Any, index: int) -> list[dict] | None:
    """One object per row from an event's inputs, which model servers ship by column: `{"x1": [..], ..}`."""
    if inputs is None:
        return None
    if (
        not isinstance(inputs, dict)
        or not all(isinstance(values, list) for values in inputs.values())
        or len({len(values) for values in inputs.values()}) > 1
    ):
        raise ValidationError({"events": f"events[{index}].inputs must be an object of equal-length column lists."})
    names = list(inputs)
    return [dict(zip(names, values, strict=True)) for values in zip(*inputs.values(), strict=True)]


def predictions_ingest(*, deployment: Deployment, events: Any) -> int:
    """Bulk-insert prediction events shipped by the deployment's model servers. Returns how many were taken.

    Events of another deployment (a misconfigured server) are ignored; a re-sent batch is not counted twice
    (`ignore_conflicts` on the unique request id).
    """
    if not isinstance(events, list):
        raise ValidationError({"events": "Must be a list of prediction events."})
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise ValidationError({"events": f"At most {MAX_EVENTS_PER_BATCH} events per request."})
    now = timezone.now()
    rows = []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not event.get("request_id"):
            raise ValidationError({"events": f"events[{index}] must be an object with a request_id."})
        if str(event.get("deployment_id")) != str(deployment.pk):
            continue
        created = parse_datetime(str(event.get("timestamp") or "")) or now
        version_id = event.get("version_id")
        try:
            status = int(event.get("status") or 0)
            latency = float(event["latency_ms"]) if event.get("latency_ms") is not None else None
        except (TypeError, ValueError):
            raise ValidationError({"events": f"events[{index}] has a non-numeric status or latency_ms."}) from None
        rows.append(
            PredictionLog(
                deployment=deployment,
                model_version_id=int(version_id) if str(version_id or "").isdigit() else None,
                request_id=_text(event["request_id"], 64),
                shadow=bool(event.get("shadow")),
                inputs=_input_rows(event.get("inputs"), index),
                outputs=event.get("outputs"),
                probabilities=event.get("probabilities"),
                latency_ms=latency,
                status=max(0, min(status, 999)),
                error=_text(event.get("error"), 2000),
                request_key=_text(event.get("request_key"), 200),
                created_at=created if timezone.is_aware(created) else timezone.make_aware(created),
            )
        )
    try:
        PredictionLog.objects.bulk_create(rows, batch_size=INGEST_BATCH_SIZE, ignore_conflicts=True)
    except IntegrityError as exc:  # a deployment deleted while its servers still ship
        raise Conflict(str(exc)) from None
    return len(rows)
