"""Reads of single logged predictions, bounded: shadow pairs, input batches for drift, and the
distribution of recent answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from apps.telemetry.models import PredictionLog

# The shadow comparison reads at most this many recent shadow answers (and their live twins).
SHADOW_PAIR_LIMIT = 5_000


def shadow_pairs(
    *, deployment_id: int, shadow_version_id: int, since: datetime | None = None, limit: int = SHADOW_PAIR_LIMIT
) -> list[tuple[Any, Any]]:
    """(live outputs, shadow outputs) of the most recent shadowed requests, paired by request and event id (a
    shadow copy carries its request's event id, so a request id a caller sent twice still pairs each answer).

    Raw rows, because a comparison needs each request's two answers, which no rollup keeps; `limit` bounds
    the read (two indexed queries of at most `limit` rows each).
    """
    logs = PredictionLog.objects.filter(deployment_id=deployment_id)
    if since is not None:
        logs = logs.filter(created_at__gte=since)
    shadow_rows = {
        (request_id, event_id): outputs
        for request_id, event_id, outputs in logs.filter(shadow=True, model_version_id=shadow_version_id)
        .order_by("-created_at")
        .values_list("request_id", "event_id", "outputs")[:limit]
    }
    live_rows = {
        (request_id, event_id): outputs
        for request_id, event_id, outputs in logs.filter(
            shadow=False, request_id__in={request_id for request_id, _ in shadow_rows}
        ).values_list("request_id", "event_id", "outputs")
    }
    return [(live_rows.get(key), outputs) for key, outputs in shadow_rows.items()]


def input_rows(inputs: Any) -> list[dict] | None:
    """A logged event's inputs as one object per row.

    Stored as the servers send them, by column (`{"x1": [..], ..}`); rows logged before issue 9 were stored
    as a list of row objects already.
    """
    if inputs is None or isinstance(inputs, list):
        return inputs
    names = list(inputs)
    return [dict(zip(names, values, strict=True)) for values in zip(*inputs.values(), strict=True)]


def _live_log_batches(
    deployment_id: int, since: datetime, until: datetime, batch_size: int, columns: tuple[str, ...]
) -> Iterator[list[tuple]]:
    """`(inputs by column, *columns)` of the live logged events of [since, until), in batches of at most
    `batch_size`; each batch is one query that resumes after the last id read (keyset pagination), so memory and
    statement time stay bounded."""
    logs = PredictionLog.objects.filter(
        deployment_id=deployment_id, shadow=False, created_at__gte=since, created_at__lt=until, inputs__isnull=False
    ).order_by("id")
    last_id = 0
    while True:
        batch = list(logs.filter(id__gt=last_id).values_list("id", "inputs", *columns)[:batch_size])
        if not batch:
            return
        last_id = batch[-1][0]
        yield [(_by_column(row[1]), *row[2:]) for row in batch if isinstance(row[1], dict | list)]


def logged_input_batches(
    *, deployment_id: int, since: datetime, until: datetime, batch_size: int
) -> Iterator[list[dict[str, list[Any]]]]:
    """The live logged inputs of [since, until) by column, in batches of at most `batch_size` events (raw rows,
    because drift needs the single input values that no rollup keeps)."""
    for batch in _live_log_batches(deployment_id, since, until, batch_size, ()):
        yield [inputs for (inputs,) in batch]


def _by_column(inputs: dict | list) -> dict[str, list[Any]]:
    """Inputs by column; rows logged before issue 9 were stored as a list of row objects."""
    if isinstance(inputs, dict):
        return inputs
    rows = [row for row in inputs if isinstance(row, dict)]
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


def logged_prediction_batches(
    *, deployment_id: int, since: datetime, until: datetime, batch_size: int
) -> Iterator[list[tuple[dict[str, list[Any]], Any, Any]]]:
    """As `logged_input_batches`, with each event's outputs and class probabilities beside its inputs:
    `(inputs by column, outputs, probabilities)` per event, in batches of at most `batch_size` events."""
    yield from _live_log_batches(deployment_id, since, until, batch_size, ("outputs", "probabilities"))
