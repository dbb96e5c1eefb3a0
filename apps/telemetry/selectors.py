"""Reads of telemetry, for the apps above it (deployments' canary analysis and autoscaler, dashboards, readouts).

Figures over time windows come from the per-minute rollups, never from raw rows: a window covers the whole
minutes it overlaps, and latency quantiles are interpolated inside the histogram bucket that holds them (as
Prometheus' `histogram_quantile`), computed by the database. Only questions that need single predictions
(the shadow comparison pairs answers by request id; performance joins each prediction to its label) read raw
rows, and then a bounded number of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db import connection
from django.db.models import Count, Exists, FloatField, Max, OuterRef, Q, Subquery, Sum
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
# Performance joins predictions to labels row by row, so it reads raw rows: per version and window at most
# this many labelled predictions (the most recent), and as many unlabelled ones for the label-free estimate.
PERFORMANCE_ROW_LIMIT = 20_000


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
    """Per-version live (not shadow) figures over the minutes that overlap [since, until); one query."""
    rows = _window_rows(
        _rollups(deployment_id=deployment_id, since=since, until=until).filter(
            model_version_id__in=version_ids, shadow=False
        ),
        "model_version_id",
    )
    stats = {version_id: VersionWindow(0, 0) for version_id in version_ids}
    for version_id, requests, errors, mean, *values in rows:
        stats[version_id] = VersionWindow(requests, errors, *values, mean_ms=mean)
    return stats


def deployment_window_stats(*, deployment_id: int, since: datetime, until: datetime) -> VersionWindow:
    """The deployment's live (not shadow) figures over the minutes that overlap [since, until), all versions
    together (their histograms summed, so the quantiles are the deployment's); one query."""
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


@dataclass(frozen=True)
class VersionPerformance:
    """How one model version did in a window, from the labels users sent (feedback), and a label-free estimate.

    `predictions` counts the version's answered requests in the window, `labelled` those with a label (so a
    page shows "labelled of predictions" next to each metric); `realised` is computed on the most recent
    `PERFORMANCE_ROW_LIMIT` labelled requests (`truncated` when there were more), its `n_labelled` counting
    rows (a request can hold several). `estimate` is CBPE on the unlabelled requests. Each metric that cannot
    be computed is None, with the reason in `reason` or `estimate_reason`.
    """

    model_version_id: int | None
    shadow: bool
    task: str | None
    predictions: int
    labelled: int
    truncated: bool
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


def _answered(deployment_id: int, since: datetime, until: datetime) -> Any:
    label = PredictionLabel.objects.filter(deployment_id=OuterRef("deployment_id"), request_id=OuterRef("request_id"))
    return (
        PredictionLog.objects.filter(
            deployment_id=deployment_id, created_at__gte=since, created_at__lt=until, status__lt=400
        )
        .filter(outputs__isnull=False)
        .annotate(
            has_label=Exists(label),
            truth=Subquery(label.values("truth")[:1]),
            label_kind=Subquery(label.values("kind")[:1]),
        )
    )


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


def _version_rows(rows: Any, labelled: bool, limit: int) -> tuple[list[tuple], bool]:
    picked = (
        rows.filter(has_label=labelled)
        .order_by("-created_at")
        .values_list("outputs", "probabilities", "truth", "label_kind")
    )
    read = list(picked[: limit + 1])
    return read[:limit], len(read) > limit


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


def performance_by_version(
    *,
    deployment_id: int,
    since: datetime,
    until: datetime,
    reference_since: datetime | None = None,
    reference_until: datetime | None = None,
    limit: int = PERFORMANCE_ROW_LIMIT,
) -> list[VersionPerformance]:
    """Realised performance per model version (live and shadow) in [since, until), from joined labels, and the
    CBPE estimate for its unlabelled predictions (classifiers), fitted on the labelled predictions of the
    reference window (by default the same window).

    Reads raw rows (a label joins one request): one counting query, then per version at most `limit`
    labelled and `limit` unlabelled requests (and `limit` labelled ones of the reference window).
    """
    window = _answered(deployment_id, since, until)
    counts = (
        window.values("model_version_id", "shadow")
        .annotate(n=Count("id"), labelled=Count("id", filter=Q(has_label=True)))
        .order_by("shadow", "model_version_id")
    )
    results = []
    for count in counts:
        key = {"model_version_id": count["model_version_id"], "shadow": count["shadow"]}
        rows = window.filter(**key)
        labelled_rows, truncated = _version_rows(rows, True, limit)
        unlabelled_rows, _ = _version_rows(rows, False, limit)
        labelled, unlabelled = _flatten(labelled_rows, True), _flatten(unlabelled_rows, False)
        if reference_since is not None and reference_until is not None:
            reference_rows, _ = _version_rows(
                _answered(deployment_id, reference_since, reference_until).filter(**key), True, limit
            )
            reference = _flatten(reference_rows, True)
        else:
            reference = labelled
        results.append(_version_performance(count, truncated, labelled, unlabelled, reference))
    return results


def _version_performance(
    count: dict, truncated: bool, labelled: _Rows, unlabelled: _Rows, reference: _Rows
) -> VersionPerformance:
    common = {
        "model_version_id": count["model_version_id"],
        "shadow": count["shadow"],
        "predictions": count["n"],
        "labelled": count["labelled"],
        "truncated": truncated,
    }
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
