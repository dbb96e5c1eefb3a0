"""Telemetry: what model servers report back (the prediction log) and its per-minute rollups.

A low layer: it imports only `apps.core`. Like the model servers' events, it names deployments, model
versions and projects by id, in plain indexed integer columns rather than foreign keys, so that the log
accepts rows fast, outlives the rows it names, and never makes this app import the apps above it.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.db import models
from django.db.models.fields.json import KeyTransform

# Upper bounds (ms) of the rollups' latency histogram buckets, as Prometheus' `le` labels; one more bucket
# takes everything slower. Fixed forever: changing them would make old and new minutes incomparable.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BUCKET_FIELDS: tuple[str, ...] = tuple(f"bucket_{i:02d}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
# A rollup's model_version_id for events that no version answered (the unique key cannot hold NULL).
NO_VERSION = 0


class LogJSONField(models.JSONField):
    """A JSONField that decodes with orjson: the performance page and drift jobs decode thousands of logged
    outputs and probabilities per request, and the json module's decoding was half of a 30-day performance
    page's server time (cProfile); orjson decodes the same values several times faster. Anything orjson
    refuses (NaN, integers beyond 64 bits) falls back to Django's own decoding."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if isinstance(value, str | bytes) and not isinstance(expression, KeyTransform):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
        return super().from_db_value(value, expression, connection)


class PredictionLog(models.Model):
    """One prediction (or shadow prediction) a model server shipped back. Written in bulk, read by time window.

    `inputs` are kept as the servers send them, by column (`{"x1": [..], "x2": [..]}`); `input_rows()` in
    selectors reads them back as one object per row. `request_id` is the caller's `X-Request-Id` (or the one
    the server made up): callers choose it, so it may repeat. A re-sent batch is not counted twice:
    (deployment_id, request_id, shadow, event_id) is unique, `event_id` being the server's own UUID per request
    (events of servers older than it carry none: "", so the request id alone keys them, as it used to).
    """

    deployment_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    model_version_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64)
    shadow = models.BooleanField(default=False)
    event_id = models.CharField(max_length=36, blank=True, default="")
    pinned = models.BooleanField(
        default=False, help_text="Sent to one version by name (/v2/models/<name>/versions/<id>/infer), not routed."
    )
    inputs = LogJSONField(null=True, blank=True)
    outputs = LogJSONField(null=True, blank=True)
    probabilities = LogJSONField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    status = models.PositiveSmallIntegerField()
    error = models.TextField(blank=True)
    request_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(help_text="When the server answered (the event's timestamp).")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Leads with (deployment_id, request_id): feedback labels and shadow pairs look requests up through it.
            models.UniqueConstraint(
                fields=["deployment_id", "request_id", "shadow", "event_id"], name="telemetry_log_event_unique"
            )
        ]
        indexes = [
            models.Index(fields=["deployment_id", "model_version_id", "created_at"], name="telemetry_log_version_idx"),
            models.Index(fields=["project_id", "created_at"], name="telemetry_log_project_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"


class PredictionRollup(models.Model):
    """The predictions of one (deployment, model version, live or shadow, pinned or routed, minute): counts and a
    latency histogram. Canary analysis reads only routed rows (`pinned=False`): a caller who names the version
    chooses where its requests go, so they say nothing of how the traffic split treats a version.

    Filled at ingest in the raw rows' transaction. `bucket_NN` counts latencies up to `LATENCY_BUCKETS_MS[NN]`
    (the last one: slower than all bounds); one integer column per bucket so quantiles come from SQL on
    Postgres and SQLite alike. `latency_count` counts events that had a latency (the histogram's total).
    """

    deployment_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    model_version_id = models.BigIntegerField(help_text="0 for predictions no version answered.")
    shadow = models.BooleanField(default=False)
    pinned = models.BooleanField(default=False)
    minute = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Answers with a 5xx status.")
    latency_count = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    bucket_00 = models.PositiveIntegerField(default=0)
    bucket_01 = models.PositiveIntegerField(default=0)
    bucket_02 = models.PositiveIntegerField(default=0)
    bucket_03 = models.PositiveIntegerField(default=0)
    bucket_04 = models.PositiveIntegerField(default=0)
    bucket_05 = models.PositiveIntegerField(default=0)
    bucket_06 = models.PositiveIntegerField(default=0)
    bucket_07 = models.PositiveIntegerField(default=0)
    bucket_08 = models.PositiveIntegerField(default=0)
    bucket_09 = models.PositiveIntegerField(default=0)
    bucket_10 = models.PositiveIntegerField(default=0)
    bucket_11 = models.PositiveIntegerField(default=0)
    bucket_12 = models.PositiveIntegerField(default=0)
    bucket_13 = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment_id", "model_version_id", "shadow", "pinned", "minute"],
                name="telemetry_rollup_routing_key",
            )
        ]
        indexes = [
            models.Index(fields=["deployment_id", "minute"], name="telemetry_rollup_window_idx"),
            models.Index(fields=["project_id", "minute"], name="telemetry_rollup_project_idx"),
        ]

    def __str__(self) -> str:
        return f"deployment {self.deployment_id} v{self.model_version_id} {self.minute:%Y-%m-%d %H:%M}"


class PredictionLabel(models.Model):
    """The ground truth of one logged prediction, sent later by the user (feedback): the join key is the
    request id the model server answered in `X-Request-Id`, unique per deployment.

    `truth` holds one entry per row of the prediction (a one-row request: a one-entry list), class labels for
    `kind="label"`, numbers for `kind="value"` (regression). A second label for the same request replaces the
    first (audited). `model_version_id` is copied from the live prediction it labels.
    """

    class Kind(models.TextChoices):
        LABEL = "label", "Class label"
        VALUE = "value", "Value (regression)"

    class Source(models.TextChoices):
        API = "api", "API (JSON)"
        CSV = "csv", "CSV upload"

    deployment_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    model_version_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    truth = LogJSONField(help_text="One label (or value) per row of the prediction.")
    source = models.CharField(max_length=8, choices=Source.choices)
    received_at = models.DateTimeField(help_text="When this label arrived (a replacement: when the replacement did).")

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["deployment_id", "request_id"], name="telemetry_label_request_unique")
        ]
        indexes = [models.Index(fields=["project_id", "received_at"], name="telemetry_label_project_idx")]

    def __str__(self) -> str:
        return f"label of {self.request_id}"


class LabelledPrediction(models.Model):
    """One answered prediction (live or shadow) that has a label: the join of a label and its log rows, made
    when the label is stored, so that the performance page finds a window's labelled predictions of a version
    through an index instead of probing the log once per label.

    `sample_key` is Knuth's multiplicative hash of the log row's id, a pseudo-random order fixed per row: the
    first N of a window in that order are a uniform sample of it, the same on every request. A row is written
    for each answered log row of the request when the label arrives (a shadow answer logged after its label
    counts from the next label of that request), and goes with its log row at retention.
    """

    log_id = models.BigIntegerField(unique=True)
    deployment_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    model_version_id = models.BigIntegerField(null=True, blank=True)
    shadow = models.BooleanField(default=False)
    predicted_at = models.DateTimeField(help_text="The log row's created_at.")
    sample_key = models.BigIntegerField()

    class Meta:
        indexes = [
            models.Index(
                fields=["deployment_id", "model_version_id", "shadow", "predicted_at"], name="telemetry_labelled_time"
            ),
            models.Index(
                fields=["deployment_id", "model_version_id", "shadow", "sample_key"], name="telemetry_labelled_sample"
            ),
            models.Index(fields=["project_id", "predicted_at"], name="telemetry_labelled_project"),
        ]

    def __str__(self) -> str:
        return f"labelled prediction {self.log_id}"


class ServerShippingReport(models.Model):
    """What one model server process last said about its event shipping, sent along with its event batches:
    the events it dropped so far (cumulative, by reason) and the events waiting in its buffer.

    `server` names the process (host and pid), so the sum over a deployment's processes is its total of drops;
    a restarted process starts a new row (its counts start again from zero)."""

    deployment_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    server = models.CharField(max_length=200)
    dropped = models.JSONField(default=dict, help_text="Reason -> events dropped since the process started.")
    buffered = models.PositiveIntegerField(default=0, help_text="Events waiting to be shipped.")
    reported_at = models.DateTimeField()

    class Meta:
        ordering = ["-reported_at"]
        constraints = [
            models.UniqueConstraint(fields=["deployment_id", "server"], name="telemetry_shipping_server_unique")
        ]
        indexes = [models.Index(fields=["deployment_id", "reported_at"], name="telemetry_shipping_recent_idx")]

    def __str__(self) -> str:
        return f"{self.server} of deployment {self.deployment_id}"
