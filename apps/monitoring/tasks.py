"""Celery tasks of monitoring: thin wrappers that call one service. Each is safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.monitoring import services


@shared_task(name="monitoring.drift_report_execute", soft_time_limit=3000, time_limit=3300)
def drift_report_execute_task(report_id: int) -> None:
    """Run a queued drift report (a second delivery finds its job claimed and does nothing)."""
    services.drift_report_execute(report_id=report_id)


@shared_task(name="monitoring.drift_reports_schedule", soft_time_limit=600, time_limit=660)
def drift_reports_schedule_task() -> int:
    """Beat: a drift report of the last interval for every running deployment with traffic."""
    return services.drift_reports_schedule()
