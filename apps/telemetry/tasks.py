"""Celery tasks of telemetry: thin wrappers that call one service. Each is safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.telemetry import services


@shared_task(name="telemetry.retention_apply", soft_time_limit=3000, time_limit=3300)
def predictions_retention_apply_task() -> dict[str, int]:
    """Beat: delete prediction rows and rollups older than their project's retention, in bounded batches."""
    return services.predictions_retention_apply()
