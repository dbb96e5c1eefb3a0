"""Celery tasks of monitoring: thin wrappers that call one service. Each is safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="monitoring.drift_report_execute", soft_time_limit=3000, time_limit=3300)
def drift_report_execute_task(report_id: int) -> None:
    """Run a queued drift report (a second delivery finds its job claimed and does nothing)."""
    # Imported here because the services module queues this task.
    from apps.monitoring.services import drift_report_execute

    drift_report_execute(report_id=report_id)


@shared_task(name="monitoring.drift_reports_schedule", soft_time_limit=600, time_limit=660)
def drift_reports_schedule_task() -> int:
    """Beat: a drift report of the last interval for every running deployment with traffic."""
    from apps.monitoring.services import drift_reports_schedule

    return drift_reports_schedule()


@shared_task(name="monitoring.drift_reports_requeue_stale", soft_time_limit=120, time_limit=150)
def drift_reports_requeue_stale_task() -> int:
    """Beat: send again the reports whose task was lost (queued too long) or whose worker died."""
    from apps.monitoring.services import drift_reports_requeue_stale

    return drift_reports_requeue_stale()


@shared_task(name="monitoring.heartbeat", bind=True, soft_time_limit=30, time_limit=40, ignore_result=True)
def heartbeat_task(self: Any) -> None:
    """Beat sends this every 30 s: that a worker ran it is what system health shows as the last sign of a worker
    (with a broker that cannot broadcast to ask the workers)."""
    from apps.monitoring.celery_signals import heartbeat_record

    heartbeat_record("worker", {"hostname": self.request.hostname or ""})
