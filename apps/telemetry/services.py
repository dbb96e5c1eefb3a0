"""Use cases of telemetry: ingest prediction events (raw rows and their per-minute rollups), retention, and the
ground truth users send later (feedback labels).

Ingest is the hot path of the console (every model server ships every prediction here), so it works in
whole batches: the batch is checked and turned into rows in Python, rows already stored (a re-sent batch)
are dropped with one indexed query, the rest are written with one COPY on Postgres (`bulk_create` on
SQLite), and the rollups of exactly those rows are added with one `INSERT … ON CONFLICT DO UPDATE`, all in
one transaction: the rollups never count a row that is not stored, nor miss one that is.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.choices import ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import audit_record_many
from apps.telemetry.models import (
    BUCKET_FIELDS,
    LATENCY_BUCKETS_MS,
    NO_VERSION,
    LabelledPrediction,
    PredictionLabel,
    PredictionLog,
    PredictionRollup,
    ServerShippingReport,
)

MAX_EVENTS_PER_BATCH = 5000
# Rows per INSERT statement on SQLite (its limit on bound variables); Postgres takes a batch in one COPY.
SQLITE_BATCH_SIZE = 500
# Retention deletes at most this many rows per statement (and transaction), so the table is never locked long.
RETENTION_BATCH_ROWS = 5_000
# Rollup rows per upsert statement (a batch spanning many minutes and versions stays under the limit).
ROLLUP_UPSERT_ROWS = 500
# Feedback: labels per request (JSON list or CSV rows; 20,000 take about 5 s to store, 9 s to replace on the
# shared test machine, so a full request stays well inside gunicorn's 120 s), the CSV file's size, request
# ids per lookup query.
MAX_LABELS_PER_REQUEST = 50_000
MAX_FEEDBACK_CSV_BYTES = 10 * 1024**2
LABEL_LOOKUP_CHUNK = 5_000
# How many unknown request ids a feedback answer lists (all are counted).
UNKNOWN_IDS_SHOWN = 100

# Columns of the raw table, in the order of the tuples built below (and of the COPY).
_COLUMNS = (
    "deployment_id",
    "project_id",
    "model_version_id",
    "request_id",
    "shadow",
    "event_id",
    "pinned",
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
_VERSION, _REQUEST_ID, _SHADOW, _EVENT_ID, _PINNED, _LATENCY, _STATUS, _CREATED = 2, 3, 4, 5, 6, 10, 11, 14
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


def predictions_ingest(
    *, source: IngestSource, events: Any, fresh_source: Callable[[], IngestSource | None] | None = None
) -> IngestResult:
    """Store a batch of prediction events shipped by one deployment's model servers.

    Events naming another deployment (a misconfigured server) are ignored, and so are events already stored
    (a re-sent batch is not counted twice). A malformed batch or event structure refuses the whole batch
    (400 naming it); an event with an impossible timestamp or a version_id that is not one of the deployment's
    model's versions is refused alone and reported in `rejected`, and the rest of the batch is stored.

    `source` may come from a cache made before a version was registered: when an event names an unknown
    version, `fresh_source()` looks the deployment up again and, if it has new versions, the batch is stored
    again with them (the events already stored are skipped).
    """
    result = _ingest(source, events)
    if fresh_source is None or not any(item["field"] == "version_id" for item in result.rejected):
        return result
    fresh = fresh_source()
    if fresh is None or fresh.version_ids == source.version_ids:
        return result
    again = _ingest(fresh, events)
    return IngestResult(result.accepted + again.accepted, again.rejected)


def _ingest(source: IngestSource, events: Any) -> IngestResult:
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


# A shipping report's server name, and how many drop reasons one may list.
SERVER_NAME_MAX = 200
MAX_DROP_REASONS = 20


# A server sends its report with every batch (several a second under load); storing it costs three queries,
# so each web process stores a server's report at most this often, and at once when its drops change.
SHIPPING_REPORT_INTERVAL_SECONDS = 10.0
REPORTS_REMEMBERED = 10_000
_reports_written: dict[tuple[int, str], tuple[float, dict]] = {}


def shipping_report_record(*, source: IngestSource, server: Any, dropped: Any, buffered: Any) -> None:
    """Keep the latest shipping report of one model server process (sent with its event batches): its
    cumulative drops by reason and its buffer depth. A malformed report is a 400 naming the field."""
    if not isinstance(server, str) or not 0 < len(server) <= SERVER_NAME_MAX:
        raise ValidationError(f"server must be a name of 1 to {SERVER_NAME_MAX} characters.", field="server")
    if (
        not isinstance(dropped, dict)
        or len(dropped) > MAX_DROP_REASONS
        or not all(
            isinstance(reason, str)
            and 0 < len(reason) <= 64
            and isinstance(count, int)
            and not isinstance(count, bool)
            and count >= 0
            for reason, count in dropped.items()
        )
    ):
        raise ValidationError(
            f"dropped must map at most {MAX_DROP_REASONS} reasons to counts of events (non-negative integers).",
            field="dropped",
        )
    if not isinstance(buffered, int) or isinstance(buffered, bool) or not 0 <= buffered < 2**31:
        raise ValidationError("buffered must be a non-negative integer.", field="buffered")
    key = (source.deployment_id, server)
    now = time.monotonic()
    last = _reports_written.get(key)
    if last is not None and last[0] > now - SHIPPING_REPORT_INTERVAL_SECONDS and last[1] == dropped:
        return
    if len(_reports_written) >= REPORTS_REMEMBERED:
        # Server names carry a process id, so restarts keep adding keys: forget them all now and then (the cost
        # is one more write per server).
        _reports_written.clear()
    _reports_written[key] = (now, dropped)
    ServerShippingReport.objects.update_or_create(
        deployment_id=source.deployment_id,
        server=server,
        defaults={
            "project_id": source.project_id,
            "dropped": dropped,
            "buffered": buffered,
            "reported_at": timezone.now(),
        },
    )


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
                _text(event.get("event_id"), 36),
                bool(event.get("pinned")),
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
    """The rows not stored yet (nor repeated earlier in the batch), by the log's unique key."""
    stored = set(
        PredictionLog.objects.filter(
            deployment_id=deployment_id, request_id__in={row[_REQUEST_ID] for row in rows}
        ).values_list("request_id", "shadow", "event_id")
    )
    new = []
    for row in rows:
        key = (row[_REQUEST_ID], row[_SHADOW], row[_EVENT_ID])
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
    deployment, project, version, request_id, shadow, event_id, pinned, inputs, outputs, probabilities = row[:10]
    latency, status, error, request_key, created = row[10:15]
    return "\t".join(
        (
            str(deployment),
            str(project),
            "\\N" if version is None else str(version),
            _copy_text(request_id),
            "t" if shadow else "f",
            _copy_text(event_id),
            "t" if pinned else "f",
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
            row[_PINNED],
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
    key_columns = ("deployment_id", "model_version_id", "shadow", "pinned", "minute")
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
            for version_id, shadow, pinned, minute in chunk:
                params.extend(
                    (
                        source.deployment_id,
                        version_id,
                        shadow,
                        pinned,
                        adapt(minute),
                        source.project_id,
                        *sums[version_id, shadow, pinned, minute],
                    )
                )
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}",
                params,
            )


# ------------------------------------------------------------------------------------------ retention


def _delete_before(
    model: type[PredictionLog | PredictionRollup | PredictionLabel | LabelledPrediction],
    time_field: str,
    scope: Q,
    cutoff: datetime,
) -> int:
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
    """Delete raw rows and rollups older than their project's retention (projects gone: the defaults).

    Labels go with the raw rows: one received before the raw rows' cutoff can only label a prediction older
    still, already deleted; so does the record of which predictions are labelled.
    """
    now = now or timezone.now()
    policies = list(
        Project.objects.values_list("pk", "prediction_log_retention_days", "prediction_rollup_retention_days")
    )
    log_default = Project._meta.get_field("prediction_log_retention_days").default
    rollup_default = Project._meta.get_field("prediction_rollup_retention_days").default
    scopes = [(Q(project_id=pk), log_days, rollup_days) for pk, log_days, rollup_days in policies]
    scopes.append((~Q(project_id__in=[pk for pk, _, _ in policies]), log_default, rollup_default))
    deleted = {"log_rows": 0, "rollup_rows": 0, "label_rows": 0}
    for scope, log_days, rollup_days in scopes:
        deleted["log_rows"] += _delete_before(PredictionLog, "created_at", scope, now - timedelta(days=log_days))
        deleted["label_rows"] += _delete_before(PredictionLabel, "received_at", scope, now - timedelta(days=log_days))
        _delete_before(LabelledPrediction, "predicted_at", scope, now - timedelta(days=log_days))
        deleted["rollup_rows"] += _delete_before(PredictionRollup, "minute", scope, now - timedelta(days=rollup_days))
    return deleted


@dataclass
class FeedbackResult:
    """What a feedback request did: `stored` labels (new or replacing), of which `replaced` changed an earlier
    label (each audited), `unknown` request ids with no logged prediction (the first ones listed), and the
    items refused, each naming its field."""

    stored: int = 0
    replaced: int = 0
    unknown: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, index: int, field_name: str, message: str) -> None:
        self.errors.append({"index": index, "field": field_name, "message": message})


def _class_label(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | bool) or (isinstance(value, str) and value != "")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_label_item(item: Any) -> tuple[str, str, list] | tuple[str, str]:
    """(request_id, kind, entries) of a well-formed item, or (field, message) naming what is wrong."""
    if not isinstance(item, dict):
        return "request_id", "each item must be an object {request_id, label} or {request_id, value}"
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        return "request_id", "required: the X-Request-Id the model server answered (1 to 64 characters)"
    if ("label" in item) == ("value" in item):
        return "label", "give either label (a class) or value (a regression target)"
    kind = "label" if "label" in item else "value"
    truth = item[kind]
    entries = truth if isinstance(truth, list) else [truth]
    valid = _class_label if kind == "label" else _number
    if not entries or not all(valid(entry) for entry in entries):
        expected = "a class (string, integer or boolean)" if kind == "label" else "a finite number"
        return kind, f"must be {expected}, or a list of them with one per row of the prediction"
    return request_id, kind, entries


def _label_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "text"


def _coerce_like(entry: str, example: Any) -> Any:
    """A CSV label (always text) as the type of the model's own outputs, so "1" labels a prediction of 1."""
    try:
        if isinstance(example, bool):
            return {"true": True, "false": False, "1": True, "0": False}[entry.strip().lower()]
        if isinstance(example, int):
            return int(entry)
        if isinstance(example, float):
            return float(entry)
    except (KeyError, ValueError):
        pass
    return entry


def _logged_predictions(project: Project, deployment_id: int | None, request_ids: list[str]) -> dict[str, list]:
    """Live predictions of the project by request id: (deployment_id, version, status, outputs, probabilities)."""
    if deployment_id is None:
        # The raw table's request-id index leads with deployment_id: name the project's deployments (those with
        # rollups since its raw rows' retention began) so each lookup uses it rather than scanning the project.
        since = timezone.now() - timedelta(days=project.prediction_log_retention_days + 1)
        rollups = PredictionRollup.objects.filter(project_id=project.pk, minute__gte=since)
        deployment_ids = list(rollups.values_list("deployment_id", flat=True).distinct().order_by())
    else:
        deployment_ids = [deployment_id]
    logs = PredictionLog.objects.filter(project_id=project.pk, deployment_id__in=deployment_ids, shadow=False)
    # A caller may send one request id several times: the label is for the latest of them in each deployment.
    found: dict[str, dict[int, tuple]] = {}
    for start in range(0, len(request_ids), LABEL_LOOKUP_CHUNK):
        chunk = request_ids[start : start + LABEL_LOOKUP_CHUNK]
        for row in (
            logs.filter(request_id__in=chunk)
            .order_by("created_at", "id")
            .values_list("request_id", "deployment_id", "model_version_id", "status", "outputs", "probabilities")
        ):
            found.setdefault(row[0], {})[row[1]] = row[1:]
    return {request_id: list(by_deployment.values()) for request_id, by_deployment in found.items()}


def prediction_labels_store(
    *,
    actor: Any,
    project: Project,
    items: Any = None,
    csv_file: Any = None,
    deployment_id: int | None = None,
) -> FeedbackResult:
    """Store ground truth for logged predictions, keyed by the request id the model server answered.

    Editors and above. Idempotent per (deployment, request id): a label for a request already labelled
    replaces it, audited with before/after when it changes it. Ids with no logged live prediction in the
    project (or the given deployment) are counted, not stored; a malformed item is refused on its own (its
    index and field in `errors`) while the rest are stored. The labels come as `items` (a JSON list) or as
    `csv_file` (an upload; its text labels are read as the type of the model's outputs).
    """
    require_project_role(actor, project, ProjectRole.EDITOR)
    source = PredictionLabel.Source.API
    if csv_file is not None or items is None:
        source, items = PredictionLabel.Source.CSV, _csv_items(csv_file)
    if not isinstance(items, list):
        raise ValidationError("must be a JSON list of {request_id, label} or {request_id, value} objects", field="body")
    if len(items) > MAX_LABELS_PER_REQUEST:
        raise ValidationError(f"at most {MAX_LABELS_PER_REQUEST:,} labels per request", field="body")
    result = FeedbackResult()
    parsed: list[tuple[int, str, str, list]] = []
    for index, item in enumerate(items):
        outcome = _parse_label_item(item)
        if len(outcome) == 2:
            result.error(index, *outcome)
        else:
            parsed.append((index, *outcome))
    logged = _logged_predictions(project, deployment_id, list({request_id for _, request_id, _, _ in parsed}))
    accepted: list[tuple[int, int | None, str, str, list]] = []
    for index, request_id, kind, entries in parsed:
        matches = logged.get(request_id)
        if not matches:
            result.unknown += 1
            if len(result.unknown_ids) < UNKNOWN_IDS_SHOWN:
                result.unknown_ids.append(request_id)
            continue
        if len(matches) > 1:
            result.error(index, "request_id", "predictions of several deployments have this id; pass deployment_id")
            continue
        deployment, version_id, status, outputs, probabilities = matches[0]
        if not isinstance(outputs, list) or not outputs:
            result.error(index, "request_id", f"the prediction failed (status {status}); it has no output to label")
            continue
        if kind == "value" and probabilities is not None:
            result.error(index, "value", "a classifier answered this request: send label, not value")
            continue
        if kind == "label" and probabilities is None:
            result.error(index, "label", "a regressor answered this request (no class probabilities): send value")
            continue
        if len(entries) != len(outputs):
            result.error(index, kind, f"the prediction has {len(outputs)} rows: give one {kind} per row")
            continue
        if kind == "label":
            if source == PredictionLabel.Source.CSV:
                entries = [_coerce_like(entry, output) for entry, output in zip(entries, outputs, strict=True)]
            pairs = zip(entries, outputs, strict=True)
            wrong = next((entry for entry, output in pairs if _label_type(entry) != _label_type(output)), None)
            if wrong is not None:
                expected = _label_type(outputs[0])
                result.error(index, "label", f"the model's classes are {expected}; {wrong!r} is {_label_type(wrong)}")
                continue
        accepted.append((deployment, version_id, request_id, kind, entries))
    _labels_write(actor, project, source, accepted, result)
    return result


def _labels_write(actor: Any, project: Project, source: str, accepted: list[tuple], result: FeedbackResult) -> None:
    """Upsert the labels in one transaction; audit each label a later one changed."""
    now = timezone.now()
    with transaction.atomic():
        deployments = {deployment for deployment, *_ in accepted}
        request_ids = [request_id for _, _, request_id, _, _ in accepted]
        stored: dict[tuple[int, str], tuple[str, list, str]] = {}
        for start in range(0, len(request_ids), LABEL_LOOKUP_CHUNK):
            existing = PredictionLabel.objects.select_for_update().filter(
                deployment_id__in=deployments, request_id__in=request_ids[start : start + LABEL_LOOKUP_CHUNK]
            )
            for deployment, request_id, kind, truth, label_source in existing.values_list(
                "deployment_id", "request_id", "kind", "truth", "source"
            ):
                stored[(deployment, request_id)] = (kind, truth, label_source)
        labels: dict[tuple[int, str], PredictionLabel] = {}
        changed: list[tuple[PredictionLabel, dict[str, Any]]] = []
        for deployment, version_id, request_id, kind, entries in accepted:
            key = (deployment, request_id)
            result.stored += 1
            earlier = labels.get(key)
            before = (earlier.kind, earlier.truth, earlier.source) if earlier is not None else stored.get(key)
            if before is not None and before[:2] == (kind, entries):
                continue  # the same label again: nothing changes
            label = PredictionLabel(
                deployment_id=deployment,
                project_id=project.pk,
                model_version_id=version_id,
                request_id=request_id,
                kind=kind,
                truth=entries,
                source=source,
                received_at=now,
            )
            labels[key] = label
            if before is not None:
                changed.append((label, dict(zip(("kind", "truth", "source"), before, strict=True))))
                result.replaced += 1
        # One upsert for new and changed labels; a concurrent request that stored the same new id first is
        # overwritten, not a 500.
        PredictionLabel.objects.bulk_create(
            list(labels.values()),
            batch_size=SQLITE_BATCH_SIZE,
            update_conflicts=True,
            unique_fields=["deployment_id", "request_id"],
            update_fields=["model_version_id", "kind", "truth", "source", "received_at"],
        )
        labelled_predictions_record({(deployment, request_id) for deployment, _, request_id, _, _ in accepted})
        audit_record_many(
            actor=actor,
            action="prediction_label.replace",
            project=project,
            changes=[
                (label, before, {"kind": label.kind, "truth": label.truth, "source": label.source})
                for label, before in changed
            ],
        )


def sample_key(log_id: int) -> int:
    """A log row's place in the performance page's sampling order: Knuth's multiplicative hash of its id."""
    return (log_id * 2654435761) % 4294967296


def labelled_predictions_record(labelled: set[tuple[int, str]]) -> None:
    """Record every answered log row (live or shadow) of the labelled (deployment, request id) pairs as labelled;
    rows already recorded are left alone, so a label sent again also picks up a shadow answer logged since."""
    by_deployment: dict[int, list[str]] = {}
    for deployment, request_id in labelled:
        by_deployment.setdefault(deployment, []).append(request_id)
    rows: list[LabelledPrediction] = []
    for deployment, request_ids in by_deployment.items():
        for start in range(0, len(request_ids), LABEL_LOOKUP_CHUNK):
            answered = PredictionLog.objects.filter(
                deployment_id=deployment,
                request_id__in=request_ids[start : start + LABEL_LOOKUP_CHUNK],
                status__lt=400,
                outputs__isnull=False,
            ).values_list("pk", "project_id", "model_version_id", "shadow", "created_at")
            rows.extend(
                LabelledPrediction(
                    log_id=log_id,
                    deployment_id=deployment,
                    project_id=project_id,
                    model_version_id=version_id,
                    shadow=shadow,
                    predicted_at=created_at,
                    sample_key=sample_key(log_id),
                )
                for log_id, project_id, version_id, shadow, created_at in answered
            )
    LabelledPrediction.objects.bulk_create(rows, batch_size=SQLITE_BATCH_SIZE, ignore_conflicts=True)


def _csv_items(upload: Any) -> list[dict[str, str]]:
    """The rows of a feedback CSV (`request_id` and `label` or `value` columns) as feedback items.

    400 naming `file` when it is too large or not UTF-8 CSV, naming the column when a required one is missing.
    """
    if upload is None:
        raise ValidationError("required: a CSV file with columns request_id and label (or value)", field="file")
    if upload.size > MAX_FEEDBACK_CSV_BYTES:
        raise ValidationError(f"the CSV is larger than the limit of {MAX_FEEDBACK_CSV_BYTES:,} bytes", field="file")
    try:
        text = upload.read().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        columns = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"not a UTF-8 CSV file: {exc}", field="file") from None
    if len(rows) > MAX_LABELS_PER_REQUEST:
        raise ValidationError(f"at most {MAX_LABELS_PER_REQUEST:,} rows per upload", field="file")
    if "request_id" not in columns:
        raise ValidationError("the CSV has no request_id column", field="request_id")
    if ("label" in columns) == ("value" in columns):
        raise ValidationError("the CSV needs exactly one of the columns label and value", field="label")
    kind = "label" if "label" in columns else "value"
    items: list[dict[str, Any]] = []
    for row in rows:
        truth: Any = row.get(kind)
        if kind == "value":
            try:
                truth = float(truth)
            except (TypeError, ValueError):
                pass  # left as text: the item is refused naming `value`
        items.append({"request_id": row.get("request_id"), kind: truth})
    return items
