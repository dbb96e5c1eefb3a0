"""Celery tasks of the registry: thin wrappers that take ids and call one service. Each is safe to run twice."""

from __future__ import annotations

import smtplib

from celery import Task, shared_task
from celery.exceptions import Retry

from apps.registry.channels import email as email_channel
from apps.registry.channels import webhook as webhook_channel


@shared_task(
    name="registry.event_dispatch", acks_late=True, reject_on_worker_lost=True, soft_time_limit=60, time_limit=90
)
def registry_event_dispatch_task(event_id: int) -> None:
    """Run the event handlers once (the service claims the event first)."""
    from apps.registry.events import event_dispatch

    event_dispatch(event_id=event_id)


@shared_task(name="registry.events_dispatch_pending", soft_time_limit=120, time_limit=150)
def registry_events_dispatch_pending_task() -> int:
    """Dispatch events whose queue message was lost, and queue again webhook deliveries that stalled (beat)."""
    from apps.registry.events import event_dispatch, events_pending_ids

    dispatched = sum(event_dispatch(event_id=event_id) for event_id in events_pending_ids())
    for delivery_id in webhook_channel.stalled_delivery_ids():
        webhook_delivery_attempt_task.delay(delivery_id)
    return dispatched


@shared_task(
    bind=True,
    name="registry.webhook_delivery_attempt",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=webhook_channel.MAX_ATTEMPTS,
    soft_time_limit=webhook_channel.ATTEMPT_SOFT_TIME_LIMIT,
    time_limit=webhook_channel.ATTEMPT_SOFT_TIME_LIMIT + 15,
)
def webhook_delivery_attempt_task(self: Task, delivery_id: int) -> Retry | None:
    """One delivery attempt; retried with exponential backoff while the channel asks for another."""
    wait = webhook_channel.webhook_delivery_attempt(delivery_id=delivery_id)
    if wait is None:
        return None
    # throw=False: the retry is scheduled without raising Retry, which eager Celery (tests) would propagate
    # to the caller as an error; eager Celery runs the returned retry at once instead.
    return self.retry(countdown=wait, throw=False)


@shared_task(
    name="registry.event_email",
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=6,
    soft_time_limit=60,
    time_limit=90,
)
def registry_event_email_task(event_id: int) -> int:
    """Send the emails of one event (approvers for new requests, the requester for decisions)."""
    return email_channel.event_email_send(event_id=event_id)


@shared_task(name="registry.promotion_requests_expire", soft_time_limit=120, time_limit=150)
def promotion_requests_expire_task() -> int:
    """Expire open promotion requests past their time (beat)."""
    from apps.registry.services import promotion_requests_expire_due

    return promotion_requests_expire_due()
