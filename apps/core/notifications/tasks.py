"""Celery tasks of the outbox: thin, safe to run twice (the claim decides who sends)."""

from __future__ import annotations

from celery import shared_task

from apps.core.notifications import services


@shared_task(
    name="notifications.deliver",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=60,
    time_limit=75,
)
def notification_deliver_task(delivery_id: int) -> None:
    """One attempt; the next one (a retry, or a paced Slack message) is queued for when it is due."""
    wait = services.delivery_attempt(delivery_id=delivery_id)
    if wait is not None:
        notification_deliver_task.apply_async((delivery_id,), countdown=wait)


@shared_task(name="notifications.deliver_due", soft_time_limit=120, time_limit=150)
def notifications_deliver_due_task() -> int:
    """Queue every due delivery that no worker holds (beat): lost messages, dead workers, due retries."""
    due = services.deliveries_due_ids()
    for delivery_id in due:
        notification_deliver_task.delay(delivery_id)
    return len(due)
