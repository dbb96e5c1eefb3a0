"""Reads of the deployments app: traffic, prediction-log windows, canary and shadow figures."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from apps.deployments.models import Deployment, DeploymentTarget, PredictionLog
from worker.deployments.analysis import WindowStats, shadow_compare, window_stats

# A window's latencies are read into memory to take percentiles; beyond this many rows a window is sampled
# by taking the most recent ones (plenty for a p99).
WINDOW_ROW_LIMIT = 50_000
SHADOW_PAIR_LIMIT = 5_000


def deployment_targets(deployment: Deployment) -> tuple[list[DeploymentTarget], DeploymentTarget | None]:
    """(live targets in split order, the shadow target or None)."""
    targets = list(deployment.targets.select_related("model_version").order_by("shadow", "position"))
    return [t for t in targets if not t.shadow], next((t for t in targets if t.shadow), None)


def deployment_traffic(deployment: Deployment) -> list[dict[str, Any]]:
    live, shadow = deployment_targets(deployment)
    rows = [
        {
            "model_version": t.model_version_id,
            "version": t.model_version.number,
            "label": t.model_version.label,
            "weight": t.weight,
            "shadow": False,
        }
        for t in live
    ]
    if shadow:
        rows.append(
            {
                "model_version": shadow.model_version_id,
                "version": shadow.model_version.number,
                "label": shadow.model_version.label,
                "weight": 0,
                "shadow": True,
            }
        )
    return rows


def version_window_stats(
    *, deployment: Deployment, version_ids: list[int], since: datetime, until: datetime
) -> dict[int, WindowStats]:
    """Per-version request counts, server errors and latency percentiles of live (not shadow) predictions."""
    stats = {}
    for version_id in version_ids:
        rows = (
            PredictionLog.objects.filter(
                deployment=deployment,
                model_version_id=version_id,
                shadow=False,
                created_at__gte=since,
                created_at__lt=until,
            )
            .order_by("-created_at")
            .values("status", "latency_ms")[:WINDOW_ROW_LIMIT]
        )
        stats[version_id] = window_stats(rows)
    return stats


def request_rate(*, deployment: Deployment, seconds: int = 60) -> float:
    since = timezone.now() - timedelta(seconds=seconds)
    count = PredictionLog.objects.filter(deployment=deployment, shadow=False, created_at__gte=since).count()
    return count / seconds


def shadow_comparison(*, deployment: Deployment, shadow_version_id: int, since: datetime | None = None) -> dict:
    """Agreement (classification) or |difference| distribution (regression) of the shadow vs the live answers."""
    logs = PredictionLog.objects.filter(deployment=deployment)
    if since is not None:
        logs = logs.filter(created_at__gte=since)
    shadow_rows = dict(
        logs.filter(shadow=True, model_version_id=shadow_version_id)
        .order_by("-created_at")
        .values_list("request_id", "outputs")[:SHADOW_PAIR_LIMIT]
    )
    live_rows = dict(logs.filter(shadow=False, request_id__in=list(shadow_rows)).values_list("request_id", "outputs"))
    pairs = [(live_rows.get(request_id), outputs) for request_id, outputs in shadow_rows.items()]
    task = deployment.registered_model.versions.filter(pk=shadow_version_id).values_list("task", flat=True).first()
    result = shadow_compare(pairs, task=task or "classification")
    result["shadow_requests"] = len(shadow_rows)
    return result


def prediction_counts(*, deployment: Deployment, since: datetime) -> dict[str, int]:
    rows = (
        PredictionLog.objects.filter(deployment=deployment, created_at__gte=since)
        .values("shadow")
        .annotate(n=Count("id"))
    )
    counts = {"live": 0, "shadow": 0}
    for row in rows:
        counts["shadow" if row["shadow"] else "live"] += row["n"]
    return counts
