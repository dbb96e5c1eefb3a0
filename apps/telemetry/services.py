"""Use cases of telemetry: ingest prediction events (raw rows and their per-minute rollups), and retention.

Ingest is the hot path of the console (every model server ships every prediction here), so it works in
whole batches: the batch is checked and turned into rows in Python, rows already stored (a re-sent batch)
are dropped with one indexed query, the rest are written with one COPY on Postgres (`bulk_create` on
SQLite), and the rollups of exactly those rows are added with one `INSERT … ON CONFLICT DO UPDATE`, all in
one transaction: the rollups never count a row that is not stored, nor miss one that is.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.exceptions import ValidationError
from apps.core.models import Project
from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, NO_VERSION, PredictionLog, PredictionRollup

MAX_EVENTS_PER_BATCH = 5000
# Rows per INSERT statement on SQLite (its limit on bound variables); Postgres takes a batch in one COPY.
SQLITE_BATCH_SIZE = 500
# Retention deletes at most this many rows per statement (and transaction), so the table is never locked long.
RETENTION_BATCH_ROWS = 5_000
# Rollup rows per upsert statement (a batch spanning many minutes and versions stays under the limit).
ROLLUP_UPSERT_ROWS = 500

# Columns of the raw table, in the order of the tuples built below (and of the COPY).
_COLUMNS = (
    "deployment_id",
    "project_id",
    "model_version_id",
    "request_id",
    "shadow",
    "inputs",
    "outputs",
    "probabilities",
    "latency_ms",
    "status",
    "error",
    "request_key",
    "created_at",
    "received_at",
)
_VERSION, _REQUEST_ID, _SHADOW, _LATENCY, _STATUS, _CREATED = 2, 3, 4, 8, 9, 12
_ROLLUP_SUMS = ("requests", "errors", "latency_count", "latency_sum_ms", *BUCKET_FIELDS)
# Text-format COPY: a backslash, tab, newline or carriage return inside a value must be escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class IngestRetry(Exception):  # noqa: N818 - an outcome the caller answers with "retry later"
    """The batch raced with a copy of itself (a server re-sent it before the first answer); send it again."""


@dataclass(frozen=True)
class IngestSource:
    """Whose events a batch may hold: the deployment its token names, that deployment's project, and the
    registry ids of its model's versions (an event naming any other version is refused)."""

    deployment_id: int
    project_id: int
    version_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class IngestResult:
    """`accepted`: events newly stored; `rejected`: `{"index", "request_id", "field", "error"}` per event refused."""

    accepted: int
    rejected: list[dict[str, Any]]


def predictions_ingest(*, source: IngestSource, events: Any) -> IngestResult:
    """Store a batch of prediction events shipped by one deployment's model servers.

    Events naming another deployment (a misconfigured server) are ignored, and so are events already stored
    (a re-sent batch is not counted twice). A malformed batch or event structure refuses the whole batch
    (400 naming it); an event with an impossible timestamp or a version_id that is not one of the deployment's
    model's versions is refused alone and reported in `rejected`, and the rest of the batch is stored.
    """
    rows, rejected = _rows(source, events)
    if not rows:
        return IngestResult(0, rejected)
    try:
        try:
            # Almost every batch is new: write it straight away.
            with transaction.atomic():
                _store(source, rows)
        except IntegrityError:
            # A re-sent batch (a server retrying after a lost answer): store only what is missing.
            with transaction.atomic():
                rows = _new_rows(source.deployment_id, rows)
                if rows:
                    _store(source, rows)
    except IntegrityError as exc:
        # Another transaction stored some of these events after we looked: the next attempt drops them.
        raise IngestRetry(str(exc)) from None
    except DataError as exc:
        raise ValidationError(f"The batch holds a value the database cannot store: {exc}", field="events") from None
    return IngestResult(len(rows), rejected)


def _store(source: IngestSource, rows: list[tuple]) -> None:
    if connection.vendor == "postgresql":
        _copy(rows)
    else:
        PredictionLog.objects.bulk_create(
            [PredictionLog(**dict(zip(_COLUMNS, row, strict=True))) for row in rows], batch_size=SQLITE_BATCH_SIZE
        )
    _rollups_add(source, rows)


def _text(value: Any, limit: int) -> str:
    # Postgres text cannot hold NUL characters.
    return str(value)[:limit].replace("\x00", "") if value is not None else ""


class _Rejected(Exception):  # noqa: N818 - one event refused, the batch goes on
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _version_id(value: Any, source: IngestSource) -> int | None:
    """One of the deployment's model's versions (its registry id), or None when no version answered."""
    if value is None or value == "":
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    if number not in source.version_ids:
        raise _Rejected("version_id", f"version_id {str(value)[:40]!r} is not a version of this deployment's model")
    return number


def _check_inputs(inputs: Any, index: int) -> None:
    """Model servers ship inputs by column, `{"x1": [..], ..}`; they are stored so (see `input_rows`)."""
    if inputs is None:
        return
    # One pass: -1 marks a column that is not a list; more than one length means unequal columns.
    lengths = (
        {len(values) if type(values) is list else -1 for values in inputs.values()} if type(inputs) is dict else {-1}
    )
    if -1 in lengths or len(lengths) > 1:
        raise ValidationError(f"events[{index}].inputs must be an object of equal-length column lists.", field="events")


def _timestamp(value: Any, default: datetime) -> datetime:
    """The event's ISO 8601 time in UTC (naive: UTC), or `default` when the event has none."""
    if value is None or value == "":
        return default
    try:
        created = datetime.fromisoformat(str(value))
        return created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # 2024-02-30, or 0001-01-01 ahead of UTC: no such instant
        raise _Rejected("timestamp", f"timestamp {str(value)[:40]!r} is not a valid ISO 8601 date and time") from None


def _rows(source: IngestSource, events: Any) -> tuple[list[tuple], list[dict[str, Any]]]:
    if not isinstance(events, list):
        raise ValidationError("Must be a list of prediction events.", field="events")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise ValidationError(f"At most {MAX_EVENTS_PER_BATCH} events per request.", field="events")
    now = timezone.now()
    deployment = str(source.deployment_id)
    rows, rejected = [], []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not event.get("request_id"):
            raise ValidationError(f"events[{index}] must be an object with a request_id.", field="events")
        if str(event.get("deployment_id")) != deployment:
            continue
        latency = event.get("latency_ms")
        try:
            status = int(event.get("status") or 0)
            latency = float(latency) if latency is not None else None
        except (TypeError, ValueError):
            raise ValidationError(f"events[{index}] has a non-numeric status or latency_ms.", field="events") from None
        inputs = event.get("inputs")
        _check_inputs(inputs, index)
        try:
            version_id = _version_id(event.get("version_id"), source)
            created = _timestamp(event.get("timestamp"), now)
        except _Rejected as exc:
            request_id = _text(event["request_id"], 64)
            rejected.append({"index": index, "request_id": request_id, "field": exc.field, "error": str(exc)})
            continue
        rows.append(
            (
                source.deployment_id,
                source.project_id,
                version_id,
                _text(event["request_id"], 64),
                bool(event.get("shadow")),
                inputs,
                event.get("outputs"),
                event.get("probabilities"),
                latency,
                max(0, min(status, 999)),
                _text(event.get("error"), 2000),
                _text(event.get("request_key"), 200),
                created,
                now,
            )
        )
    return rows, rejected


def _new_rows(deployment_id: int, rows: list[tuple]) -> list[tuple]:
    """The rows not stored yet (nor repeated earlier in the batch)."""
    stored = set(
        PredictionLog.objects.filter(
            deployment_id=deployment_id, request_id__in={row[_REQUEST_ID] for row in rows}
        ).values_list("request_id", "shadow")
    )
    new = []
    for row in rows:
        key = (row[_REQUEST_ID], row[_SHADOW])
        if key not in stored:
            stored.add(key)
            new.append(row)
    return new


def _copy_text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_json(value: Any) -> str:
    if value is None:
        return "\\N"
    # orjson escapes control characters inside strings, so only its backslashes need doubling.
    text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return text.replace("\\", "\\\\") if "\\" in text else text


def _copy_line(row: tuple, received: str) -> str:
    """One row in COPY's text format, column by column (a generic per-value dispatch costs twice as much)."""
    deployment, project, version, request_id, shadow, inputs, outputs, probabilities = row[:8]
    latency, status, error, request_key, created = row[8:13]
    return "\t".join(
        (
            str(deployment),
            str(project),
            "\\N" if version is None else str(version),
            _copy_text(request_id),
            "t" if shadow else "f",
            _copy_json(inputs),
            _copy_json(outputs),
            _copy_json(probabilities),
            "\\N" if latency is None else repr(latency),
            str(status),
            _copy_text(error),
            _copy_text(request_key),
            created.isoformat(),
            received,
        )
    )


def _copy(rows: list[tuple]) -> None:
    received = rows[0][-1].isoformat()
    buffer = io.StringIO("\n".join(_copy_line(row, received) for row in rows) + "\n")
    # Through Django's error wrapper, so a unique violation is an IntegrityError like any other.
    with connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.copy_expert(f"COPY {PredictionLog._meta.db_table} ({', '.join(_COLUMNS)}) FROM STDIN", buffer)


def _rollups_add(source: IngestSource, rows: Iterable[tuple]) -> None:
    """Add the rows to their minutes' rollups: summed per key here, then one upsert for the batch."""
    sums: dict[tuple, list] = {}
    width = len(_ROLLUP_SUMS)
    for row in rows:
        created = row[_CREATED]
        key = (
            row[_VERSION] if row[_VERSION] is not None else NO_VERSION,
            row[_SHADOW],
            created.replace(second=0, microsecond=0),
        )
        total = sums.get(key)
        if total is None:
            total = sums[key] = [0, 0, 0, 0.0] + [0] * (width - 4)
        total[0] += 1
        if row[_STATUS] >= 500:
            total[1] += 1
        latency = row[_LATENCY]
        if latency is not None:
            total[2] += 1
            total[3] += latency
            total[4 + bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
    table = PredictionRollup._meta.db_table
    key_columns = ("deployment_id", "model_version_id", "shadow", "minute")
    columns = (*key_columns, "project_id", *_ROLLUP_SUMS)
    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in _ROLLUP_SUMS)
    adapt = connection.ops.adapt_datetimefield_value
    # Sorted keys: concurrent batches lock the same rollup rows in the same order, so they cannot deadlock.
    keys = sorted(sums)
    with connection.cursor() as cursor:
        for start in range(0, len(keys), ROLLUP_UPSERT_ROWS):
            chunk = keys[start : start + ROLLUP_UPSERT_ROWS]
            params: list[Any] = []
            for version_id, shadow, minute in chunk:
                params.extend(
                    (
                        source.deployment_id,
                        version_id,
                        shadow,
                        adapt(minute),
                        source.project_id,
                        *sums[version_id, shadow, minute],
                    )
                )
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}",
                params,
            )


# ------------------------------------------------------------------------------------------ retention


def _delete_before(model: type[PredictionLog | PredictionRollup], time_field: str, scope: Q, cutoff: datetime) -> int:
    """Delete the scope's rows older than `cutoff`, at most RETENTION_BATCH_ROWS per statement.

    Each round reads the ids of the oldest RETENTION_BATCH_ROWS rows through the (project_id, time) index
    and deletes exactly those ids in its own transaction: every statement is bounded, no lock is held for
    long, and ingest goes on between statements. (Ids, not an id range: rows arrive out of time order, so
    a range between the first and last old id could hold more rows than the bound.)
    """
    old = model.objects.filter(scope, **{f"{time_field}__lt": cutoff})
    deleted = 0
    while True:
        ids = list(old.order_by(time_field).values_list("pk", flat=True)[:RETENTION_BATCH_ROWS])
        if not ids:
            return deleted
        with transaction.atomic():
            count, _ = model.objects.filter(pk__in=ids).delete()
        deleted += count


def predictions_retention_apply(*, now: datetime | None = None) -> dict[str, int]:
    """Delete raw rows and rollups older than their project's retention (projects gone: the defaults)."""
    now = now or timezone.now()
    policies = list(
        Project.objects.values_list("pk", "prediction_log_retention_days", "prediction_rollup_retention_days")
    )
    log_default = Project._meta.get_field("prediction_log_retention_days").default
    rollup_default = Project._meta.get_field("prediction_rollup_retention_days").default
    scopes = [(Q(project_id=pk), log_days, rollup_days) for pk, log_days, rollup_days in policies]
    scopes.append((~Q(project_id__in=[pk for pk, _, _ in policies]), log_default, rollup_default))
    deleted = {"log_rows": 0, "rollup_rows": 0}
    for scope, log_days, rollup_days in scopes:
        deleted["log_rows"] += _delete_before(PredictionLog, "created_at", scope, now - timedelta(days=log_days))
        deleted["rollup_rows"] += _delete_before(PredictionRollup, "minute", scope, now - timedelta(days=rollup_days))
    return deleted
