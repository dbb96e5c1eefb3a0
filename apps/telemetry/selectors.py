"""Reads of telemetry, for the apps above it (deployments' canary analysis and autoscaler, dashboards, readouts).

Figures over time windows come from the per-minute rollups, never from raw rows: a window covers the whole
minutes it overlaps, and latency quantiles are interpolated inside the histogram bucket that holds them (as
Prometheus' `histogram_quantile`), computed by the database. Only questions that need single predictions
(the shadow comparison pairs answers by request id) read raw rows, and then a bounded number of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import FloatField, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, PredictionLog, PredictionRollup

# The shadow comparison reads at most this many recent shadow answers (and their live twins).
SHADOW_PAIR_LIMIT = 5_000
QUANTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99}


@dataclass(frozen=True)
class VersionWindow:
    """What one model version did in one window: live requests, 5xx answers and latency figures (ms)."""

    requests: int
    errors: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _quantile_sql(q: float) -> str:
    """The q-quantile of latency from a window's summed histogram (columns `lc`, `b00` … as floats), in SQL.

    The rank q × n falls in the first bucket whose cumulative count reaches it; the value is interpolated
    linearly between that bucket's bounds. In the last bucket (slower than every bound) it is the highest
    bound: the histogram knows no more. NULL when the window has no latency.
    """
    whens = ["WHEN lc = 0 THEN NULL"]
    lower, cumulative = 0.0, "0"
    for index, upper in enumerate(LATENCY_BUCKETS_MS):
        before, cumulative = cumulative, f"{cumulative} + b{index:02d}"
        whens.append(
            f"WHEN {q} * lc <= {cumulative} THEN {lower} + {upper - lower} * ({q} * lc - ({before})) / b{index:02d}"
        )
        lower = upper
    whens.append(f"ELSE {lower}")
    return f"CASE {' '.join(whens)} END"


def _rollups(*, deployment_id: int, since: datetime, until: datetime | None = None) -> Any:
    rollups = PredictionRollup.objects.filter(deployment_id=deployment_id, minute__gte=minute_floor(since))
    return rollups.filter(minute__lt=until) if until is not None else rollups


def version_window_stats(
    *, deployment_id: int, version_ids: list[int], since: datetime, until: datetime
) -> dict[int, VersionWindow]:
    """Per-version live (not shadow) figures over the minutes that overlap [since, until); one query.

    The inner query sums the window's rollup rows per version; the outer one takes the quantiles from those
    sums (so each bucket is summed once, not once per quantile and bucket).
    """
    sums = (
        _rollups(deployment_id=deployment_id, since=since, until=until)
        .filter(model_version_id__in=version_ids, shadow=False)
        .values("model_version_id")
        .annotate(
            n=Sum("requests"),
            failed=Sum("errors"),
            latency_sum=Cast(Sum("latency_sum_ms"), FloatField()),
            lc=Cast(Sum("latency_count"), FloatField()),
            **{f"b{index:02d}": Cast(Sum(name), FloatField()) for index, name in enumerate(BUCKET_FIELDS)},
        )
        .order_by()
    )
    inner, params = sums.query.sql_with_params()
    quantiles = ", ".join(_quantile_sql(q) for q in QUANTILES.values())
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT model_version_id, n, failed, latency_sum / NULLIF(lc, 0), {quantiles} FROM ({inner}) AS sums",
            params,
        )
        rows = cursor.fetchall()
    stats = {version_id: VersionWindow(0, 0) for version_id in version_ids}
    for version_id, requests, errors, mean, *values in rows:
        stats[version_id] = VersionWindow(requests, errors, *values, mean_ms=mean)
    return stats


def request_rate(*, deployment_id: int, seconds: int = 60, now: datetime | None = None) -> float:
    """Live requests per second over the last whole minutes (at least one) before the current one."""
    minutes = max(1, seconds // 60)
    end = minute_floor(now or timezone.now())
    count = (
        _rollups(deployment_id=deployment_id, since=end - timedelta(minutes=minutes), until=end)
        .filter(shadow=False)
        .aggregate(n=Sum("requests"))["n"]
    )
    return (count or 0) / (minutes * 60)


def prediction_counts(*, deployment_id: int, since: datetime) -> dict[str, int]:
    """Live and shadow predictions in the minutes since `since`."""
    rows = _rollups(deployment_id=deployment_id, since=since).values("shadow").annotate(n=Sum("requests")).order_by()
    counts = {"live": 0, "shadow": 0}
    for row in rows:
        counts["shadow" if row["shadow"] else "live"] += row["n"]
    return counts


def shadow_pairs(
    *, deployment_id: int, shadow_version_id: int, since: datetime | None = None, limit: int = SHADOW_PAIR_LIMIT
) -> list[tuple[Any, Any]]:
    """(live outputs, shadow outputs) of the most recent shadowed requests, paired by request id.

    Raw rows, because a comparison needs each request's two answers, which no rollup keeps; `limit` bounds
    the read (two indexed queries of at most `limit` rows each).
    """
    logs = PredictionLog.objects.filter(deployment_id=deployment_id)
    if since is not None:
        logs = logs.filter(created_at__gte=since)
    shadow_rows = dict(
        logs.filter(shadow=True, model_version_id=shadow_version_id)
        .order_by("-created_at")
        .values_list("request_id", "outputs")[:limit]
    )
    live_rows = dict(logs.filter(shadow=False, request_id__in=list(shadow_rows)).values_list("request_id", "outputs"))
    return [(live_rows.get(request_id), outputs) for request_id, outputs in shadow_rows.items()]


def input_rows(inputs: Any) -> list[dict] | None:
    """A logged event's inputs as one object per row.

    Stored as the servers send them, by column (`{"x1": [..], ..}`); rows logged before issue 9 were stored
    as a list of row objects already.
    """
    if inputs is None or isinstance(inputs, list):
        return inputs
    names = list(inputs)
    return [dict(zip(names, values, strict=True)) for values in zip(*inputs.values(), strict=True)]


def logged_input_batches(
    *, deployment_id: int, since: datetime, until: datetime, batch_size: int
) -> Iterator[list[dict[str, list[Any]]]]:
    """The live logged inputs of [since, until) by column, in batches of at most `batch_size` events.

    Raw rows, because drift needs the single input values that no rollup keeps; each batch is one query that
    resumes after the last id read (keyset pagination), so memory and statement time stay bounded.
    """
    logs = PredictionLog.objects.filter(
        deployment_id=deployment_id, shadow=False, created_at__gte=since, created_at__lt=until, inputs__isnull=False
    ).order_by("id")
    last_id = 0
    while True:
        batch = list(logs.filter(id__gt=last_id).values_list("id", "inputs")[:batch_size])
        if not batch:
            return
        last_id = batch[-1][0]
        yield [_by_column(inputs) for _, inputs in batch if isinstance(inputs, dict | list)]


def _by_column(inputs: dict | list) -> dict[str, list[Any]]:
    """Inputs by column; rows logged before issue 9 were stored as a list of row objects."""
    if isinstance(inputs, dict):
        return inputs
    rows = [row for row in inputs if isinstance(row, dict)]
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}
