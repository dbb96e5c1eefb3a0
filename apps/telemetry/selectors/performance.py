"""Realised performance from joined labels, with the label-free estimate, per version and over time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db.models import Count, Exists, OuterRef, Sum

from apps.telemetry.models import LabelledPrediction, PredictionLabel, PredictionLog
from apps.telemetry.selectors.rollups import _rollups, _step_floor
from worker.monitoring.cbpe import CALIBRATION_FOLDS, ECE_BINS, CBPEEstimate, cbpe_estimate, cbpe_fit
from worker.monitoring.performance import (
    ClassificationPerformance,
    RegressionPerformance,
    classification_performance,
    regression_performance,
)

# Performance joins predictions to labels row by row, so it reads raw rows: per version and window a uniform
# sample of at most this many labelled predictions, and the most recent as many unlabelled ones for the
# label-free estimate: 2,000 rows put the standard error of an accuracy at most 0.011, and keep the page's
# Python work (decoding, metrics, calibration fit) near 100 ms per version.
PERFORMANCE_ROW_LIMIT = 2_000


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
    that stops there, with one probe per row of the record of labelled predictions (its unique log id)."""
    labelled = LabelledPrediction.objects.filter(log_id=OuterRef("pk"))
    picked = (
        _window_logs(deployment_id, project_id, since, until)
        .filter(status__lt=400, outputs__isnull=False, **key)
        .filter(~Exists(labelled))
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
    sample of at most `limit` of them with their outputs and labels.

    Read from the record of labelled predictions (`LabelledPrediction`), never by joining the log to the labels:
    the counts are one grouped read of the window's labelled rows, and each version's sample is the first
    `limit` of its window in `sample_key` order (an index walk that stops there, or for a short window the
    window's rows sorted), whose log rows and labels are then read by key. So the work grows with the labelled
    predictions of the window at most, never with the log's size."""
    scope = LabelledPrediction.objects.filter(
        deployment_id=deployment_id, predicted_at__gte=since, predicted_at__lt=until
    )
    if project_id is not None:
        scope = scope.filter(project_id=project_id)
    counts = scope.values_list("model_version_id", "shadow").annotate(n=Count("pk")).order_by()
    samples: dict[tuple[int | None, bool], LabelledSample] = {}
    for version_id, shadow, n in counts:
        picked = scope.filter(model_version_id=version_id, shadow=shadow).order_by("sample_key")
        log_ids = list(picked.values_list("log_id", flat=True)[:limit])
        samples[(version_id, shadow)] = LabelledSample(n, _labelled_rows(deployment_id, log_ids))
    return samples


def _labelled_rows(deployment_id: int, log_ids: list[int]) -> list[tuple]:
    """The log rows of `log_ids` with their labels: (created_at, outputs, probabilities, truth, kind) each."""
    logs = list(
        PredictionLog.objects.filter(pk__in=log_ids)
        .order_by("pk")
        .values_list("request_id", "created_at", "outputs", "probabilities")
    )
    labels = PredictionLabel.objects.filter(deployment_id=deployment_id, request_id__in={row[0] for row in logs})
    truths = {
        request_id: (truth, kind) for request_id, truth, kind in labels.values_list("request_id", "truth", "kind")
    }
    return [
        (created_at, outputs, probabilities, *truths[request_id])
        for request_id, created_at, outputs, probabilities in logs
        if request_id in truths
    ]


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
