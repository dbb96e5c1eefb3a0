"""The outbox's use cases: enqueue a message for a target, and make one attempt at a due delivery.

The claim is a conditional update (`filter(id, open status, due, lease expired).update(claimed_until=…)`)
whose row count says whether this worker won; the lease ends when the attempt is recorded. A worker that
dies between the claim and the send leaves nothing sent and nothing recorded: when the lease runs out, the
beat sweep (`deliveries_due_ids`) hands the row to another worker, which sends it once.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.core.notifications.channels import TRANSPORTS
from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus
from apps.core.notifications.hooks import delivery_failed
from apps.core.notifications.http import SendResult
from apps.core.notifications.message import Message
from apps.core.notifications.models import Delivery, DeliveryAttempt, DeliveryThrottle
from apps.core.queueing import enqueue_on_commit

BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600
# A receiver that is down is retried for this long (one attempt an hour once the backoff reaches its cap).
RETRY_HORIZON = timedelta(hours=24)
DUE_BATCH = 200
# The sweep leaves a due row this long to its own queued message, so a busy queue does not fill with copies.
SWEEP_GRACE = timedelta(seconds=60)
# Slack accepts about one message per second per incoming webhook; paced targets get no more than this.
THROTTLE_INTERVAL = timedelta(seconds=1)
# A throttled delivery waits at least this long, so a retry never spins on a slot about to open.
THROTTLE_MIN_WAIT_SECONDS = 0.1
OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


def backoff_seconds(attempt: int) -> int:
    """30 s after the first failure, doubling, at most an hour."""
    return min(BACKOFF_BASE_SECONDS * 2 ** max(attempt - 1, 0), BACKOFF_MAX_SECONDS)


def _attempts_within(horizon: timedelta) -> int:
    """How many attempts the backoff fits in `horizon`: the last one is the first made after it has passed."""
    attempts, waited = 1, 0
    while waited < horizon.total_seconds():
        waited += backoff_seconds(attempts)
        attempts += 1
    return attempts


MAX_ATTEMPTS = _attempts_within(RETRY_HORIZON)


def notification_enqueue(*, channel: str, target: dict[str, Any], message: Message, source: str = "") -> Delivery:
    """Store a delivery in the caller's transaction and queue its first attempt once that commits."""
    from apps.core.notifications.tasks import notification_deliver_task

    if channel not in TRANSPORTS:
        raise ValueError(f"unknown notification channel {channel!r}; expected one of {sorted(TRANSPORTS)}")
    delivery = Delivery.objects.create(
        channel=channel,
        target=target,
        recipient=TRANSPORTS[channel].shown(target)[:500],
        source=source,
        message=message.to_json(),
    )
    # A lost send is taken over by the beat's notifications.deliver_due (deliveries_due_ids).
    enqueue_on_commit(notification_deliver_task, delivery.pk)
    return delivery


@transaction.atomic
def deliveries_cancel(*, source: str, reason: str) -> int:
    """The target is gone (a subscription deleted): open deliveries of `source` fail with `reason`, and every
    delivery of it forgets its target, whose secrets (a Slack URL, an HMAC key) must not outlive it."""
    rows = Delivery.objects.filter(source=source)
    cancelled = rows.filter(status__in=OPEN_STATUSES).update(
        status=DeliveryStatus.FAILED, claimed_until=None, last_error=f"cancelled: {reason}"
    )
    rows.update(target={})
    return cancelled


def _due(now: datetime) -> QuerySet[Delivery]:
    return Delivery.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now), status__in=OPEN_STATUSES, next_attempt_at__lte=now
    )


def delivery_claim(*, delivery_id: int) -> Delivery | None:
    """Take the delivery for one attempt, for NOTIFICATIONS_CLAIM_LEASE_SECONDS; None when it is not ours."""
    now = timezone.now()
    lease = timedelta(seconds=settings.NOTIFICATIONS_CLAIM_LEASE_SECONDS)
    if not _due(now).filter(pk=delivery_id).update(claimed_until=now + lease):
        return None
    return Delivery.objects.get(pk=delivery_id)


def _throttle_take(key: str) -> float:
    """Take the target's next slot: 0 when taken, else the seconds until it opens (atomic across workers)."""
    now = timezone.now()
    if DeliveryThrottle.objects.filter(key=key, next_allowed_at__lte=now).update(
        next_allowed_at=now + THROTTLE_INTERVAL
    ):
        return 0.0
    slot, created = DeliveryThrottle.objects.get_or_create(
        key=key, defaults={"next_allowed_at": now + THROTTLE_INTERVAL}
    )
    if created:
        return 0.0
    return max((slot.next_allowed_at - now).total_seconds(), THROTTLE_MIN_WAIT_SECONDS)


def delivery_attempt(*, delivery_id: int) -> float | None:
    """Claim, send once, record; returns the seconds until the next attempt, or None when there is none to queue."""
    delivery = delivery_claim(delivery_id=delivery_id)
    if delivery is None:
        return None
    transport = TRANSPORTS[delivery.channel]
    key = transport.throttle_key(delivery.target)
    if key:
        wait = _throttle_take(key)
        if wait:
            # Not an attempt: the row goes back, due when the slot opens.
            Delivery.objects.filter(pk=delivery.pk).update(
                claimed_until=None, next_attempt_at=timezone.now() + timedelta(seconds=wait)
            )
            return wait
    started = time.perf_counter()
    message = Message.from_json(delivery.message)
    result = transport.send(target=delivery.target, message=message, delivery_id=delivery.pk)
    return _record(delivery, result, duration_ms=(time.perf_counter() - started) * 1000, throttle_key=key)


def _outcome(result: SendResult) -> str:
    if result.ok:
        return DeliveryOutcome.SUCCEEDED
    if result.permanent:
        return DeliveryOutcome.REFUSED
    return DeliveryOutcome.RATE_LIMITED if result.status_code == 429 else DeliveryOutcome.FAILED


@transaction.atomic
def _record(delivery: Delivery, result: SendResult, *, duration_ms: float, throttle_key: str | None) -> float | None:
    number = delivery.attempts + 1
    now = timezone.now()
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=number,
        outcome=_outcome(result),
        url=result.url[:500],
        status_code=result.status_code,
        error=result.error[:2000],
        duration_ms=duration_ms,
    )
    row = Delivery.objects.filter(pk=delivery.pk)
    if result.ok:
        row.update(
            status=DeliveryStatus.SUCCEEDED, attempts=number, delivered_at=now, claimed_until=None, last_error=""
        )
        return None
    if result.permanent or number >= MAX_ATTEMPTS:
        row.update(status=DeliveryStatus.FAILED, attempts=number, claimed_until=None, last_error=result.error[:2000])
        delivery.refresh_from_db()
        delivery_failed(delivery)
        return None
    wait = result.retry_after if result.retry_after is not None else float(backoff_seconds(number))
    if throttle_key and result.retry_after is not None:
        # The receiver asked every sender to this target to wait, not only this delivery.
        DeliveryThrottle.objects.filter(key=throttle_key, next_allowed_at__lt=now + timedelta(seconds=wait)).update(
            next_allowed_at=now + timedelta(seconds=wait)
        )
    row.update(
        status=DeliveryStatus.RETRYING,
        attempts=number,
        next_attempt_at=now + timedelta(seconds=wait),
        claimed_until=None,
        last_error=result.error[:2000],
    )
    return wait


def deliveries_due_ids(*, limit: int = DUE_BATCH) -> list[int]:
    """Due deliveries no live lease holds, whose own queue message is late (lost) or whose worker died."""
    now = timezone.now()
    late = _due(now).filter(Q(next_attempt_at__lte=now - SWEEP_GRACE) | Q(claimed_until__isnull=False))
    return list(late.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:limit])
