"""Reads of the deployments app: traffic, and canary and shadow figures from telemetry's selectors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.deployments.models import Deployment, DeploymentTarget
from apps.telemetry import selectors as telemetry
from worker.deployments.analysis import WindowStats, shadow_compare


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
    """Per-version live request counts, server errors and latency percentiles, from telemetry's rollups."""
    windows = telemetry.version_window_stats(
        deployment_id=deployment.pk, version_ids=version_ids, since=since, until=until
    )
    return {
        version_id: WindowStats(window.requests, window.errors, window.p99_ms, window.p50_ms)
        for version_id, window in windows.items()
    }


def shadow_comparison(*, deployment: Deployment, shadow_version_id: int, since: datetime | None = None) -> dict:
    """Agreement (classification) or |difference| distribution (regression) of the shadow vs the live answers."""
    pairs = telemetry.shadow_pairs(deployment_id=deployment.pk, shadow_version_id=shadow_version_id, since=since)
    task = deployment.registered_model.versions.filter(pk=shadow_version_id).values_list("task", flat=True).first()
    result = shadow_compare(pairs, task=task or "classification")
    result["shadow_requests"] = len(pairs)
    return result
