"""Reads of A/B tests: the per-arm numbers a readout needs, from telemetry (assignments, guardrails, labels) and
from the test's outcomes.

Assignments and outcomes are counted in SQL. Guardrails come from telemetry's per-minute rollups
(`version_window_stats`). Label metrics compare each labelled request's truth with what the model answered,
which needs the two JSON values side by side: at most `LABEL_ROW_LIMIT` labelled requests per arm are read
(the most recent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from apps.abtests.choices import ABTestMetric
from apps.abtests.models import ABTest, ABTestArm, ABTestReadout, Outcome
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import PredictionLabel, PredictionLog, PredictionRollup
from worker.abtests.stats import ArmStats

LABEL_ROW_LIMIT = 100_000
# How far back the power calculator looks to estimate the deployment's traffic per day.
TRAFFIC_LOOKBACK = timedelta(days=7)


def abtests(*, user: object) -> QuerySet[ABTest]:
    return ABTest.objects.for_user(user).select_related("deployment__project", "winner__model")


def arms(abtest: ABTest) -> list[ABTestArm]:
    return list(abtest.arms.select_related("model_version__model").order_by("position"))


def readouts(abtest: ABTest) -> QuerySet[ABTestReadout]:
    return abtest.readouts.all()


def latest_readout(abtest: ABTest) -> ABTestReadout | None:
    return abtest.readouts.order_by("-as_of", "-id").first()


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


def test_window(abtest: ABTest, until: datetime | None = None) -> Window | None:
    """[started, stopped or now), cut at `until`; None before the test started."""
    if abtest.started_at is None:
        return None
    end = abtest.stopped_at or timezone.now()
    if until is not None:
        end = min(end, until)
    return Window(abtest.started_at, max(end, abtest.started_at))


def _routed(abtest: ABTest, version_ids: list[int], window: Window) -> QuerySet[PredictionLog]:
    """Live requests a test arm answered in the window: routed traffic only (no shadow, no unrouted failure)."""
    return PredictionLog.objects.filter(
        deployment_id=abtest.deployment_id,
        shadow=False,
        model_version_id__in=version_ids,
        created_at__gte=window.since,
        created_at__lt=window.until,
    )


def assignment_counts(abtest: ABTest, version_ids: list[int], window: Window) -> dict[int, int]:
    """Units assigned per arm: distinct assignment keys, plus each request sent without a key (one unit each)."""
    rows = (
        _routed(abtest, version_ids, window)
        .values("model_version_id")
        .annotate(
            keys=Count("request_key", distinct=True, filter=~Q(request_key="")),
            keyless=Count("id", filter=Q(request_key="")),
        )
        .order_by()
    )
    counts = dict.fromkeys(version_ids, 0)
    for row in rows:
        counts[row["model_version_id"]] = row["keys"] + row["keyless"]
    return counts


def outcome_stats(abtest: ABTest, version_ids: list[int]) -> dict[int, ArmStats]:
    rows = (
        Outcome.objects.filter(abtest=abtest, model_version_id__in=version_ids)
        .values("model_version_id")
        .annotate(n=Count("id"), total=Sum("value"), total_sq=Sum(F("value") * F("value")))
        .order_by()
    )
    stats = {version_id: ArmStats(0, 0.0, 0.0) for version_id in version_ids}
    for row in rows:
        stats[row["model_version_id"]] = ArmStats(row["n"], float(row["total"] or 0), float(row["total_sq"] or 0))
    return stats


def _label_value(metric: str, outputs: Any, truth: Any) -> float | None:
    """A labelled request's outcome: 1/0 whether every row was right (accuracy), or the mean absolute error."""
    if not isinstance(outputs, list) or not isinstance(truth, list) or not outputs or len(outputs) != len(truth):
        return None
    if metric == ABTestMetric.ACCURACY:
        return float(all(output == label for output, label in zip(outputs, truth, strict=True)))
    try:
        return sum(abs(float(o) - float(t)) for o, t in zip(outputs, truth, strict=True)) / len(outputs)
    except (TypeError, ValueError):
        return None


def label_stats(abtest: ABTest, version_ids: list[int], window: Window) -> dict[int, ArmStats]:
    """Accuracy or MAE per arm from the feedback labels of the requests each arm answered in the window."""
    outputs = PredictionLog.objects.filter(
        deployment_id=abtest.deployment_id, request_id=OuterRef("request_id"), shadow=False
    ).values("outputs")[:1]
    stats = {}
    for version_id in version_ids:
        answered = _routed(abtest, [version_id], window).values("request_id")
        labels = (
            PredictionLabel.objects.filter(
                deployment_id=abtest.deployment_id, model_version_id=version_id, request_id__in=answered
            )
            .annotate(outputs=Subquery(outputs))
            .order_by("-received_at")
            .values_list("outputs", "truth")[:LABEL_ROW_LIMIT]
        )
        n, total, total_sq = 0, 0.0, 0.0
        for output, truth in labels:
            value = _label_value(abtest.primary_metric, output, truth)
            if value is None:
                continue
            n, total, total_sq = n + 1, total + value, total_sq + value * value
        stats[version_id] = ArmStats(n, total, total_sq)
    return stats


def guardrail_windows(abtest: ABTest, version_ids: list[int], window: Window) -> dict[int, telemetry.VersionWindow]:
    return telemetry.version_window_stats(
        deployment_id=abtest.deployment_id, version_ids=version_ids, since=window.since, until=window.until
    )


def traffic_per_day(*, deployment_id: int, now: datetime | None = None) -> float | None:
    """Live requests per day over the last week, or since the first logged minute when that is later (at least
    an hour); None without traffic."""
    now = now or timezone.now()
    since = now - TRAFFIC_LOOKBACK
    counts = telemetry.prediction_counts(deployment_id=deployment_id, since=since)
    if not counts["live"]:
        return None
    first = (
        PredictionRollup.objects.filter(deployment_id=deployment_id, minute__gte=telemetry.minute_floor(since))
        .order_by("minute")
        .values_list("minute", flat=True)
        .first()
    )
    span = max(now - max(first or since, since), timedelta(hours=1))
    return counts["live"] / (span / timedelta(days=1))
