"""Figures over time windows from the per-minute rollups: counts, error rates and latency quantiles
computed by the database, per version, per deployment and per dashboard step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import FloatField, Max, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, PredictionRollup

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
    *, deployment_id: int, version_ids: list[int], since: datetime, until: datetime, with_pinned: bool = False
) -> dict[int, VersionWindow]:
    """Per-version live (not shadow) figures over the minutes that overlap [since, until); one query.

    Only the traffic the server routed itself by default (what canary analysis compares): a request pinned to a
    version by its caller would let any client steer a version's figures. `with_pinned` adds those requests.
    """
    rollups = _rollups(deployment_id=deployment_id, since=since, until=until).filter(
        model_version_id__in=version_ids, shadow=False
    )
    if not with_pinned:
        rollups = rollups.filter(pinned=False)
    stats = {version_id: VersionWindow(0, 0) for version_id in version_ids}
    for version_id, requests, errors, mean, *values in _window_rows(rollups, "model_version_id"):
        stats[version_id] = VersionWindow(requests, errors, *values, mean_ms=mean)
    return stats


def deployment_window_stats(*, deployment_id: int, since: datetime, until: datetime) -> VersionWindow:
    """The deployment's live (not shadow) figures over the minutes that overlap [since, until), all versions
    together (their histograms summed, so the quantiles are the deployment's); one query. Pinned requests count:
    they were served, and an alert on the deployment's errors or latency should see them."""
    return deployments_window_stats(deployment_ids=[deployment_id], since=since, until=until)[deployment_id]


def deployments_window_stats(
    *, deployment_ids: list[int], since: datetime, until: datetime
) -> dict[int, VersionWindow]:
    """`deployment_window_stats` of many deployments over the same window, in one query (alert rounds)."""
    rollups = PredictionRollup.objects.filter(
        deployment_id__in=deployment_ids, minute__gte=minute_floor(since), minute__lt=until, shadow=False
    )
    stats = {deployment_id: VersionWindow(0, 0) for deployment_id in deployment_ids}
    for deployment_id, requests, errors, mean, *values in _window_rows(rollups, "deployment_id"):
        stats[deployment_id] = VersionWindow(requests, errors, *values, mean_ms=mean)
    return stats


def _window_rows(rollups: Any, group: str) -> list[tuple]:
    """(group, requests, errors, mean, p50, p90, p99) per value of `group` in the rollups.

    The inner query sums the window's rollup rows per group; the outer one takes the quantiles from those
    sums (so each bucket is summed once, not once per quantile and bucket).
    """
    sums = (
        rollups.values(group)
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
            f"SELECT {group}, n, failed, latency_sum / NULLIF(lc, 0), {quantiles} FROM ({inner}) AS sums", params
        )
        return cursor.fetchall()


def last_request_minutes(*, deployment_ids: list[int]) -> dict[int, datetime | None]:
    """The latest minute in which each deployment answered a live request (None if it never did); one query."""
    latest = dict(
        PredictionRollup.objects.filter(deployment_id__in=deployment_ids, shadow=False, requests__gt=0)
        .values("deployment_id")
        .annotate(last=Max("minute"))
        .order_by()
        .values_list("deployment_id", "last")
    )
    return {deployment_id: latest.get(deployment_id) for deployment_id in deployment_ids}


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


@dataclass(frozen=True)
class SeriesPoint:
    """What one model version (live or shadow) did in one step of a dashboard's time axis."""

    model_version_id: int
    shadow: bool
    start: datetime
    requests: int
    errors: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class VersionTotals:
    """What one model version (live or shadow) did over a whole window, with its latency histogram.

    `buckets` counts latencies per bucket of `LATENCY_BUCKETS_MS` (the last: slower than every bound)."""

    model_version_id: int
    shadow: bool
    requests: int
    errors: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    buckets: tuple[int, ...]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


# work_mem of the dashboard's statement: enough to hash a month of per-minute rows (about 15 MB for 3 versions).
WINDOW_WORK_MEM = "32MB"


def _step_sql(step_seconds: int) -> str:
    """The start of the step holding a rollup's minute, in the database's dialect: a timestamp on Postgres
    (date_bin, cheaper than epoch arithmetic on numerics), epoch seconds on SQLite. Steps that divide a day
    line up with UTC hours and days."""
    if connection.vendor == "postgresql":
        return f"date_bin(interval '{step_seconds} seconds', minute, timestamptz '1970-01-01 00:00:00+00')"
    return f"(CAST(strftime('%%s', minute) AS INTEGER) / {step_seconds}) * {step_seconds}"


def _as_datetime(step: Any) -> datetime:
    return step if isinstance(step, datetime) else datetime.fromtimestamp(step, tz=UTC)


def rollup_window(
    *, deployment_id: int, since: datetime, until: datetime, step: timedelta, version_id: int | None = None
) -> tuple[list[VersionTotals], list[SeriesPoint]]:
    """Over the minutes that overlap [since, until): per (model version, live or shadow) the window's totals
    (requests, errors, latency quantiles and summed histogram), and the same per step of `step`.

    One statement and one pass over the rollup rows: the rows are summed per step, the totals are the sums of
    those few step rows, and the quantiles are computed by the database from each summed histogram. Steps
    without traffic are absent (a chart leaves a gap, not a zero latency)."""
    step_seconds = int(step.total_seconds())
    table = PredictionRollup._meta.db_table
    buckets = [f"b{index:02d}" for index in range(len(BUCKET_FIELDS))]
    summed = ", ".join(
        f"CAST(SUM({name}) AS DOUBLE PRECISION) AS {alias}" for name, alias in zip(BUCKET_FIELDS, buckets, strict=True)
    )
    resummed = ", ".join(f"SUM({alias})" for alias in buckets)
    version_filter = " AND model_version_id = %s" if version_id is not None else ""
    quantiles = ", ".join(_quantile_sql(q) for q in QUANTILES.values())
    sql = (
        f"WITH steps AS (SELECT model_version_id, shadow, {_step_sql(step_seconds)} AS step, SUM(requests) AS n, "
        f"SUM(errors) AS failed, CAST(SUM(latency_sum_ms) AS DOUBLE PRECISION) AS latency_sum, "
        f"CAST(SUM(latency_count) AS DOUBLE PRECISION) AS lc, {summed} FROM {table} "
        f"WHERE deployment_id = %s AND minute >= %s AND minute < %s{version_filter} "
        f"GROUP BY model_version_id, shadow, step), "
        f"sums AS (SELECT model_version_id, shadow, 0 AS total, step, n, failed, latency_sum, lc, {', '.join(buckets)} "
        f"FROM steps UNION ALL SELECT model_version_id, shadow, 1, NULL, SUM(n), SUM(failed), SUM(latency_sum), "
        f"SUM(lc), {resummed} FROM steps GROUP BY model_version_id, shadow) "
        f"SELECT model_version_id, shadow, total, step, n, failed, latency_sum / NULLIF(lc, 0), {quantiles}, "
        f"{', '.join(buckets)} FROM sums ORDER BY shadow, model_version_id, total, step"
    )
    params: list[Any] = [deployment_id, minute_floor(since), until]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Postgres cannot estimate how many steps the rows fall in (it guesses one per row): with the default
            # 4 MB it plans an on-disk sort of every row instead of a hash of the few steps, and the inflated cost
            # turns on JIT compilation, which takes longer (about 400 ms) than the query itself.
            cursor.execute(f"SET LOCAL work_mem = '{WINDOW_WORK_MEM}'")
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, [*params, version_id] if version_id is not None else params)
        rows = cursor.fetchall()
    totals, series = [], []
    for version, shadow, total, step_start, requests, errors, mean, p50, p90, p99, *counts in rows:
        figures = {
            "model_version_id": version,
            "shadow": bool(shadow),
            "requests": int(requests),
            "errors": int(errors),
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "mean_ms": mean,
        }
        if total:
            totals.append(VersionTotals(**figures, buckets=tuple(int(count) for count in counts)))
        else:
            series.append(SeriesPoint(**figures, start=_as_datetime(step_start)))
    return totals, series


def _step_floor(moment: datetime, step_seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step_seconds, tz=UTC)
