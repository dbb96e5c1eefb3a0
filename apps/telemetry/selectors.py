"""Reads of telemetry, for the apps above it (deployments' canary analysis and autoscaler, dashboards, readouts).

Figures over time windows come from the per-minute rollups, never from raw rows: a window covers the whole
minutes it overlaps, and latency quantiles are interpolated inside the histogram bucket that holds them (as
Prometheus' `histogram_quantile`), computed by the database. Only questions that need single predictions
(the shadow comparison pairs answers by request id; performance joins each prediction to its label) read raw
rows, and then a bounded number of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.db.models import Exists, FloatField, Max, OuterRef, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, PredictionLabel, PredictionLog, PredictionRollup
from worker.monitoring.cbpe import CALIBRATION_FOLDS, ECE_BINS, CBPEEstimate, cbpe_estimate, cbpe_fit
from worker.monitoring.performance import (
    ClassificationPerformance,
    RegressionPerformance,
    classification_performance,
    regression_performance,
)

# The shadow comparison reads at most this many recent shadow answers (and their live twins).
SHADOW_PAIR_LIMIT = 5_000
QUANTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99}
# Performance joins predictions to labels row by row, so it reads raw rows: per version and window a uniform
# sample of at most this many labelled predictions, and the most recent as many unlabelled ones for the
# label-free estimate: 2,000 rows put the standard error of an accuracy at most 0.011, and keep the page's
# Python work (decoding, metrics, calibration fit) near 100 ms per version.
PERFORMANCE_ROW_LIMIT = 2_000
# A label arrives after the prediction it labels, so only labels received since the window began (less this
# allowance for a model server's clock running ahead of the console's) can label the window's predictions.
LABEL_CLOCK_SKEW = timedelta(hours=1)
# Knuth's multiplicative hash of the row id orders the labelled rows of a version pseudo-randomly (the same
# way on Postgres and SQLite, and the same on each request), so the first N of that order are a uniform sample.
SAMPLE_HASH = "(log.id * 2654435761) % 4294967296"


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


@dataclass(frozen=True)
class VersionPerformance:
    """How one model version did in a window, from the labels users sent (feedback), and a label-free estimate.

    `predictions` counts the version's requests in the window answered without a 5xx (from the rollups),
    `labelled` those with a label (so a page shows "labelled of predictions" next to each metric). `realised` is
    computed on `labelled_sample` of the labelled requests, a uniform sample of at most `PERFORMANCE_ROW_LIMIT`
    (`truncated` when smaller than `labelled`), its `n_labelled` counting rows (a request can hold several).
    `estimate` is CBPE on the most recent `unlabelled_sample` of the unlabelled requests. Each metric that
    cannot be computed is None, with the reason in `reason` or `estimate_reason`.
    """

    model_version_id: int | None
    shadow: bool
    task: str | None
    predictions: int
    labelled: int
    truncated: bool
    labelled_sample: int
    unlabelled_sample: int
    classes: list | None
    realised: ClassificationPerformance | RegressionPerformance | None
    reason: str | None
    estimate: CBPEEstimate | None
    estimate_reason: str | None


@dataclass(frozen=True)
class _Rows:
    y_pred: np.ndarray
    y_true: np.ndarray | None
    proba: np.ndarray | None
    kinds: frozenset[str]  # of the labels read: "label" (classes) or "value" (regression)


def _window_logs(deployment_id: int, project_id: int | None, since: datetime, until: datetime) -> Any:
    """The deployment's logged predictions of [since, until).

    With its project's id the read is a range of the (project, created_at) index; without it, Postgres has no
    index that starts with the deployment and the time (the version sits between them in the other one), so it
    reads every index entry of the deployment's whole history: 12 s instead of milliseconds for an hour of a
    10-million-row log."""
    logs = PredictionLog.objects.filter(deployment_id=deployment_id, created_at__gte=since, created_at__lt=until)
    return logs.filter(project_id=project_id) if project_id is not None else logs


def _flatten(rows: list[tuple], labelled: bool) -> _Rows:
    """One entry per predicted row: the outputs (and probabilities, labels) of requests laid end to end."""
    y_pred, y_true, proba, kinds = [], [], [], set()
    for outputs, probabilities, truth, kind in rows:
        # The log keeps what servers sent; a request whose shapes do not line up is left out, not a 500.
        if not isinstance(outputs, list) or (labelled and (not isinstance(truth, list) or len(truth) != len(outputs))):
            continue
        y_pred.extend(outputs)
        if labelled:
            y_true.extend(truth)
            kinds.add(kind)
        if isinstance(probabilities, list) and len(probabilities) == len(outputs):
            proba.extend(probabilities)
    probabilities_array = None
    if proba and len(proba) == len(y_pred):
        try:
            probabilities_array = np.array(proba, dtype=float)
        except (TypeError, ValueError):  # ragged rows or non-numbers: no probabilities, so no AUC or estimate
            probabilities_array = None
    return _Rows(
        y_pred=np.array(y_pred, dtype=object),
        y_true=np.array(y_true, dtype=object) if labelled else None,
        proba=probabilities_array,
        kinds=frozenset(kinds),
    )


def _class_order(proba: np.ndarray, y_pred: np.ndarray, y_true: np.ndarray | None) -> tuple[list | None, str | None]:
    """The class of each probability column. Events do not carry it; the model server's classes are sorted
    (scikit-learn's `classes_`) and its label is the argmax, so the order is the sorted classes seen, accepted
    only when the columns match them one to one and every prediction is its row's argmax."""
    seen = set(y_pred.tolist()) | (set(y_true.tolist()) if y_true is not None else set())
    try:
        classes = sorted(seen)
    except TypeError:
        return None, "labels and predictions mix types, so the probability columns cannot be matched to classes"
    if proba.ndim != 2 or len(classes) != proba.shape[1]:
        width = proba.shape[1] if proba.ndim == 2 else 0
        return None, f"{len(classes)} classes seen but {width} probability columns: their order is unknown"
    argmax = np.array(classes, dtype=object)[np.argmax(proba, axis=1)]
    if not (argmax == y_pred).all():
        return None, "the predictions are not the argmax of the probabilities in sorted class order"
    return classes, None


def _classes_of(labelled: _Rows, unlabelled: _Rows, reference: _Rows) -> tuple[list | None, str | None]:
    with_proba = [rows for rows in (labelled, unlabelled, reference) if rows.proba is not None]
    if not with_proba:
        return None, "no class probabilities were logged"
    if len({rows.proba.shape[1:] for rows in with_proba}) > 1:
        return None, "the logged probabilities do not all have the same number of columns"
    return _class_order(
        np.concatenate([rows.proba for rows in with_proba]),
        np.concatenate([rows.y_pred for rows in with_proba]),
        np.concatenate([labelled.y_true, reference.y_true]),
    )


def _unlabelled_rows(
    deployment_id: int, project_id: int | None, since: datetime, until: datetime, key: dict, limit: int
) -> list[tuple]:
    """The most recent `limit` answered unlabelled requests of one version: a backward walk of the time index
    that stops there, with one probe of the labels' index per row (and no label columns to read)."""
    label = PredictionLabel.objects.filter(deployment_id=OuterRef("deployment_id"), request_id=OuterRef("request_id"))
    picked = (
        _window_logs(deployment_id, project_id, since, until)
        .filter(status__lt=400, outputs__isnull=False, **key)
        .filter(~Exists(label))
        .order_by("-created_at")
        .values_list("outputs", "probabilities")
    )
    return [(outputs, probabilities, None, None) for outputs, probabilities in picked[:limit]]


@dataclass(frozen=True)
class LabelledSample:
    """A version's count of labelled requests in a window and a uniform sample of them (`labelled_samples`)."""

    labelled: int
    rows: list[tuple]  # (created_at, outputs, probabilities, truth, kind)


def labelled_samples(
    *, deployment_id: int, project_id: int | None, since: datetime, until: datetime, limit: int = PERFORMANCE_ROW_LIMIT
) -> dict[tuple[int | None, bool], LabelledSample]:
    """Per (model version, shadow): how many answered requests of [since, until) have a label, and a uniform
    sample of at most `limit` of them with their outputs and labels; one statement.

    It starts from the labels, not the log: only labels received since the window began can label its
    predictions, and each finds its predictions through the log's (deployment, request id) index, so the work
    grows with the labels of the window, never with its unlabelled predictions. The sample is the first `limit`
    of each version's labelled rows in the order of `SAMPLE_HASH`; only those rows' outputs are read."""
    log_table, label_table = PredictionLog._meta.db_table, PredictionLabel._meta.db_table
    project_filter = " AND label.project_id = %s" if project_id is not None else ""
    order = SAMPLE_HASH.replace("%", "%%")  # the driver reads a lone % as a parameter
    sql = (
        f"WITH joined AS (SELECT log.id, log.model_version_id, log.shadow, label.truth, label.kind, "
        f"COUNT(*) OVER (PARTITION BY log.model_version_id, log.shadow) AS labelled, "
        f"ROW_NUMBER() OVER (PARTITION BY log.model_version_id, log.shadow ORDER BY {order}) AS pick "
        f"FROM {label_table} AS label JOIN {log_table} AS log "
        f"ON log.deployment_id = label.deployment_id AND log.request_id = label.request_id "
        f"WHERE label.deployment_id = %s{project_filter} AND label.received_at >= %s "
        f"AND log.created_at >= %s AND log.created_at < %s AND log.status < 400 AND log.outputs IS NOT NULL) "
        f"SELECT joined.model_version_id, joined.shadow, joined.labelled, log.created_at, log.outputs, "
        f"log.probabilities, joined.truth, joined.kind FROM joined JOIN {log_table} AS log ON log.id = joined.id "
        f"WHERE joined.pick <= %s"
    )
    params: list[Any] = [deployment_id, *([project_id] if project_id is not None else []), since - LABEL_CLOCK_SKEW]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Postgres underestimates how few log rows the labels reach and hashes the whole log (a sequential
            # scan: 1.5 s at 1M rows for 30 days) instead of probing its index once per label.
            cursor.execute("SET LOCAL enable_hashjoin = off")
            cursor.execute("SET LOCAL enable_mergejoin = off")
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, [*params, since, until, limit])
        fetched = cursor.fetchall()
    samples: dict[tuple[int | None, bool], LabelledSample] = {}
    for version_id, shadow, labelled, created_at, outputs, probabilities, truth, kind in fetched:
        sample = samples.setdefault((version_id, bool(shadow)), LabelledSample(int(labelled), []))
        sample.rows.append((_as_datetime(created_at), _json(outputs), _json(probabilities), _json(truth), kind))
    return samples


def _json(value: Any) -> Any:
    # Django has the drivers hand JSON columns over as text (JSONField decodes them); a raw cursor gets that text.
    return json.loads(value) if isinstance(value, str | bytes) else value


def _answered_counts(deployment_id: int, since: datetime, until: datetime) -> dict[tuple[int | None, bool], int]:
    """Requests answered without a 5xx per (model version, shadow), from the rollups of the window's minutes."""
    rows = (
        _rollups(deployment_id=deployment_id, since=since, until=until)
        .values("model_version_id", "shadow")
        .annotate(n=Sum("requests"), failed=Sum("errors"))
        .order_by()
    )
    counts: dict[tuple[int | None, bool], int] = {}
    for row in rows:
        key = (row["model_version_id"] or None, row["shadow"])
        counts[key] = counts.get(key, 0) + row["n"] - row["failed"]
    return counts


def performance_by_version(
    *,
    deployment_id: int,
    since: datetime,
    until: datetime,
    reference_since: datetime | None = None,
    reference_until: datetime | None = None,
    limit: int = PERFORMANCE_ROW_LIMIT,
    project_id: int | None = None,
    samples: dict[tuple[int | None, bool], LabelledSample] | None = None,
) -> list[VersionPerformance]:
    """Realised performance per model version (live and shadow) in [since, until), from joined labels, and the
    CBPE estimate for its unlabelled predictions (classifiers), fitted on the labelled predictions of the
    reference window (by default the same window).

    Bounded whatever the window's length: the counts of predictions come from the rollups and those of labelled
    ones from the labels; raw rows are read only for a uniform sample of at most `limit` labelled requests per
    version (and of the reference window), and the most recent `limit` unlabelled ones. `samples`, the
    window's `labelled_samples`, spares reading them again when the caller has them (the trend shares them).
    """
    answered = _answered_counts(deployment_id, since, until)
    if samples is None:
        samples = labelled_samples(
            deployment_id=deployment_id, project_id=project_id, since=since, until=until, limit=limit
        )
    references = (
        labelled_samples(
            deployment_id=deployment_id,
            project_id=project_id,
            since=reference_since,
            until=reference_until,
            limit=limit,
        )
        if reference_since is not None and reference_until is not None
        else None
    )
    keys = {key for key, n in answered.items() if n > 0} | set(samples)
    results = []
    for version_id, shadow in sorted(keys, key=lambda key: (key[1], key[0] is None, key[0] or 0)):
        sample = samples.get((version_id, shadow), LabelledSample(0, []))
        predictions = max(answered.get((version_id, shadow), 0), sample.labelled)
        key = {"model_version_id": version_id, "shadow": shadow}
        unlabelled_rows = (
            _unlabelled_rows(deployment_id, project_id, since, until, key, limit)
            if predictions > sample.labelled
            else []
        )
        labelled = _flatten([row[1:] for row in sample.rows], True)
        unlabelled = _flatten(unlabelled_rows, False)
        if references is not None:
            reference_rows = references.get((version_id, shadow), LabelledSample(0, [])).rows
            reference = _flatten([row[1:] for row in reference_rows], True)
        else:
            reference = labelled
        common = {
            "model_version_id": version_id,
            "shadow": shadow,
            "predictions": predictions,
            "labelled": sample.labelled,
            "truncated": len(sample.rows) < sample.labelled,
            "labelled_sample": len(sample.rows),
            "unlabelled_sample": len(unlabelled_rows),
        }
        results.append(_version_performance(common, labelled, unlabelled, reference))
    return results


def _estimate(reference: _Rows, current: _Rows, classes: list | None) -> tuple[CBPEEstimate | None, str | None]:
    if current.y_pred.size == 0:
        return None, "every prediction in the window has a label"
    if current.proba is None or reference.proba is None or classes is None:
        return None, "the estimate needs the class probabilities of labelled and unlabelled predictions"
    if reference.y_true.size < CALIBRATION_FOLDS * ECE_BINS:
        return None, f"the reference needs at least {CALIBRATION_FOLDS * ECE_BINS} labelled rows"
    try:
        model = cbpe_fit(y_true=reference.y_true, proba=reference.proba, classes=classes)
        return cbpe_estimate(model=model, proba=current.proba, y_pred=current.y_pred), None
    except ValueError as exc:
        return None, str(exc)


def _version_performance(common: dict, labelled: _Rows, unlabelled: _Rows, reference: _Rows) -> VersionPerformance:
    # The labels say which task it is (the feedback service checks their kind against the prediction); with
    # none yet, logged class probabilities do.
    kinds = labelled.kinds | reference.kinds
    classifier = "label" in kinds if kinds else any(rows.proba is not None for rows in (labelled, unlabelled))
    if not classifier:
        realised = (
            regression_performance(y_true=labelled.y_true.astype(float), y_pred=labelled.y_pred.astype(float))
            if labelled.y_pred.size
            else None
        )
        return VersionPerformance(
            **common,
            task="regression",
            classes=None,
            realised=realised,
            reason=None if realised else "no labelled predictions in the window",
            estimate=None,
            estimate_reason="the label-free estimate is for classifiers",
        )
    classes, class_reason = _classes_of(labelled, unlabelled, reference)
    realised, reason = None, "no labelled predictions in the window"
    if labelled.y_pred.size:
        scored = labelled.proba is not None and classes is not None
        realised = classification_performance(
            y_true=labelled.y_true,
            y_pred=labelled.y_pred,
            proba=labelled.proba if scored else None,
            classes=classes if scored else None,
        )
        reason = None
        if realised.roc_auc is None and class_reason is not None:
            realised = dataclasses.replace(realised, roc_auc_reason=class_reason)
    estimate, estimate_reason = _estimate(reference, unlabelled, classes)
    if estimate is None and class_reason is not None and unlabelled.y_pred.size:
        estimate_reason = class_reason
    return VersionPerformance(
        **common,
        task="classification",
        classes=classes,
        realised=realised,
        reason=reason,
        estimate=estimate,
        estimate_reason=estimate_reason,
    )


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


@dataclass(frozen=True)
class TrendPoint:
    """Realised performance of one model version (live or shadow) in one step, from its labelled predictions:
    accuracy for classifiers, mean absolute error for regression; `n` counts the labelled rows behind it."""

    model_version_id: int | None
    shadow: bool
    start: datetime
    metric: str
    value: float
    n: int


def performance_trend(
    *,
    deployment_id: int,
    project_id: int,
    since: datetime,
    until: datetime,
    step: timedelta,
    limit: int = PERFORMANCE_ROW_LIMIT,
    samples: dict[tuple[int | None, bool], LabelledSample] | None = None,
) -> tuple[list[TrendPoint], bool]:
    """Accuracy (or MAE) per (model version, live or shadow, step) of [since, until), and whether it is
    sampled: each version's labelled predictions, or a uniform sample of `limit` of them when it has more
    (one statement, see `labelled_samples`); each point's `n` counts the rows behind it."""
    if samples is None:
        samples = labelled_samples(
            deployment_id=deployment_id, project_id=project_id, since=since, until=until, limit=limit
        )
    step_seconds = int(step.total_seconds())
    sums: dict[tuple[Any, bool, datetime, str], list[float]] = {}
    for (version_id, shadow), sample in samples.items():
        for created_at, outputs, _, truth, kind in sample.rows:
            if not isinstance(outputs, list) or not isinstance(truth, list) or len(outputs) != len(truth):
                continue
            if kind == PredictionLabel.Kind.VALUE:
                try:
                    score = sum(abs(float(o) - float(t)) for o, t in zip(outputs, truth, strict=True))
                except (TypeError, ValueError):  # a prediction that is not a number cannot be scored as a value
                    continue
                metric = "mae"
            else:
                score, metric = sum(o == t for o, t in zip(outputs, truth, strict=True)), "accuracy"
            key = (version_id, shadow, _step_floor(created_at, step_seconds), metric)
            total = sums.setdefault(key, [0.0, 0])
            total[0] += score
            total[1] += len(outputs)
    points = [
        TrendPoint(model_version_id=version_id, shadow=shadow, start=start, metric=metric, value=score / n, n=n)
        for (version_id, shadow, start, metric), (score, n) in sums.items()
        if n
    ]
    points.sort(key=lambda point: (point.shadow, point.model_version_id or 0, point.start))
    return points, any(len(sample.rows) < sample.labelled for sample in samples.values())


# Outputs with at most this many distinct integers are classes; more are values (regression).
MAX_INTEGER_CLASSES = 20
OUTPUT_QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


@dataclass(frozen=True)
class PredictionDistribution:
    """What the live model versions answered per step: the count of each class, or quantiles of the values.

    Read from the most recent `n_rows` predicted rows (`truncated` when the window held more requests)."""

    kind: str  # "classes" or "values"
    steps: list[datetime]
    classes: dict[str, list[int]]
    quantiles: dict[str, list[float | None]]
    n_rows: int
    truncated: bool


def _is_class(value: Any) -> bool:
    return isinstance(value, str | bool) or value is None


def prediction_distribution(
    *,
    deployment_id: int,
    project_id: int,
    since: datetime,
    until: datetime,
    step: timedelta,
    limit: int = PERFORMANCE_ROW_LIMIT,
) -> PredictionDistribution:
    """The live predictions of [since, until) per step: class counts, or p10/p50/p90 of the predicted values.

    Raw rows, because no rollup keeps outputs: the most recent `limit` answered requests, one query."""
    rows = list(
        _window_logs(deployment_id, project_id, since, until)
        .filter(shadow=False, status__lt=400, outputs__isnull=False)
        .order_by("-created_at")
        .values_list("created_at", "outputs")[: limit + 1]
    )
    step_seconds = int(step.total_seconds())
    by_step: dict[datetime, list[Any]] = {}
    for created_at, outputs in rows[:limit]:
        if isinstance(outputs, list):
            values = [value for value in outputs if not isinstance(value, dict | list)]
            by_step.setdefault(_step_floor(created_at, step_seconds), []).extend(values)
    steps = sorted(by_step)
    values = [value for step_values in by_step.values() for value in step_values]
    numbers = [value for value in values if not _is_class(value)]
    integers = all(isinstance(value, int) for value in numbers)
    classes: dict[str, list[int]] = {}
    quantiles: dict[str, list[float | None]] = {}
    if any(_is_class(value) for value in values) or (integers and len(set(numbers)) <= MAX_INTEGER_CLASSES):
        kind = "classes"
        names = sorted({str(value) for value in values})
        for name in names:
            classes[name] = [sum(str(value) == name for value in by_step[moment]) for moment in steps]
    else:
        kind = "values"
        for name, q in OUTPUT_QUANTILES.items():
            quantiles[name] = []
            for moment in steps:
                numbers = np.array([value for value in by_step[moment] if isinstance(value, int | float)], dtype=float)
                quantiles[name].append(float(np.quantile(numbers, q)) if numbers.size else None)
    return PredictionDistribution(
        kind=kind,
        steps=steps,
        classes=classes,
        quantiles=quantiles,
        n_rows=len(values),
        truncated=len(rows) > limit,
    )


def logged_prediction_batches(
    *, deployment_id: int, since: datetime, until: datetime, batch_size: int
) -> Iterator[list[tuple[dict[str, list[Any]], Any, Any]]]:
    """As `logged_input_batches`, with each event's outputs and class probabilities beside its inputs:
    `(inputs by column, outputs, probabilities)` per event, in batches of at most `batch_size` events."""
    logs = PredictionLog.objects.filter(
        deployment_id=deployment_id, shadow=False, created_at__gte=since, created_at__lt=until, inputs__isnull=False
    ).order_by("id")
    last_id = 0
    while True:
        batch = list(logs.filter(id__gt=last_id).values_list("id", "inputs", "outputs", "probabilities")[:batch_size])
        if not batch:
            return
        last_id = batch[-1][0]
        yield [
            (_by_column(inputs), outputs, probabilities)
            for _, inputs, outputs, probabilities in batch
            if isinstance(inputs, dict | list)
        ]
