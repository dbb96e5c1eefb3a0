"""Celery tasks of alerts: thin, safe to run twice and at once (the rule claim decides who evaluates)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="alerts.evaluate_due", soft_time_limit=120, time_limit=150)
def alerts_evaluate_due_task() -> int:
    """Beat, every ALERTS_EVALUATION_INTERVAL_SECONDS: evaluate every due rule."""
    from apps.alerts.services import alert_rules_evaluate_due

    return alert_rules_evaluate_due().rules
