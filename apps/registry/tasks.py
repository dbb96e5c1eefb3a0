"""Celery tasks of the registry: thin wrappers that take ids and call one service. Each is safe to run twice."""

from __future__ import annotations

from celery import shared_task


@shared_task(
    name="registry.event_dispatch", acks_late=True, reject_on_worker_lost=True, soft_time_limit=60, time_limit=90
)
def registry_event_dispatch_task(event_id: int) -> None:
    """Run the event handlers once (the service claims the event first)."""
    from apps.registry.events import event_dispatch

    event_dispatch(event_id=event_id)


@shared_task(name="registry.events_dispatch_pending", soft_time_limit=120, time_limit=150)
def registry_events_dispatch_pending_task() -> int:
    """Dispatch events whose queue message or worker was lost (beat)."""
    from apps.registry.events import event_dispatch, events_pending_ids

    return sum(event_dispatch(event_id=event_id) for event_id in events_pending_ids())


@shared_task(name="registry.promotion_requests_expire", soft_time_limit=120, time_limit=150)
def promotion_requests_expire_task() -> int:
    """Expire open promotion requests past their time (beat)."""
    from apps.registry.services import promotion_requests_expire_due

    return promotion_requests_expire_due()
