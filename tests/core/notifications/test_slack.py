"""Slack: Block Kit with a text fallback, Retry-After honoured on 429, one message per second per webhook URL
(across workers), and the URL masked wherever it is shown."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.core.notifications import services
from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus
from apps.core.notifications.http import mask_url
from apps.core.notifications.message import Message
from apps.core.notifications.models import Delivery, DeliveryThrottle
from apps.core.notifications.slack.transport import SlackTransport

pytestmark = pytest.mark.django_db

MESSAGE = Message(
    subject="[demo] bob asks to move iris v2 to production",
    text="bob asks to move iris v2 to production <now>.",
    fields=(("Model", "iris"), ("Target", "production")),
    link="https://console.example.com/approvals/3/",
    kind="request.created",
)


@pytest.fixture(autouse=True)
def private_addresses_allowed(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True


def _slack(url: str) -> Delivery:
    return services.notification_enqueue(channel="slack", target={"url": url}, message=MESSAGE)


def test_block_kit_with_a_text_fallback(hook_server) -> None:
    delivery = _slack(hook_server.url("/services/T000/B000/XXXXabcd"))
    assert services.delivery_attempt(delivery_id=delivery.pk) is None
    [received] = hook_server.received
    assert received.headers["content-type"] == "application/json"
    body = json.loads(received.body)
    assert body["text"] == f"{MESSAGE.subject} {MESSAGE.link}"
    header, text, fields, actions = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": MESSAGE.subject, "emoji": True}}
    assert text == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "bob asks to move iris v2 to production &lt;now&gt;."},
    }
    assert fields["fields"] == [
        {"type": "mrkdwn", "text": "*Model*\niris"},
        {"type": "mrkdwn", "text": "*Target*\nproduction"},
    ]
    [button] = actions["elements"]
    assert button["type"] == "button" and button["url"] == MESSAGE.link
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    # The attempt log and the shown recipient hold the masked URL only.
    masked = "http://127.0.0.1/services/T…/…/••••abcd"
    assert delivery.recipient == masked and delivery.attempt_log.get().url == masked


def test_a_429_waits_for_retry_after(hook_server) -> None:
    hook_server.retry_after = "17"
    delivery = _slack(hook_server.url("/limited"))
    before = timezone.now()
    assert services.delivery_attempt(delivery_id=delivery.pk) == 17
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING
    assert abs((delivery.next_attempt_at - before).total_seconds() - 17) < 2
    attempt = delivery.attempt_log.get()
    assert (attempt.outcome, attempt.status_code) == (DeliveryOutcome.RATE_LIMITED, 429)
    # Slack asked every sender to this webhook to wait: another message to it waits too, unsent.
    other = _slack(hook_server.url("/limited"))
    wait = services.delivery_attempt(delivery_id=other.pk)
    assert 15 < wait <= 17 and len(hook_server.received) == 1


def test_at_most_one_message_per_second_per_webhook_url(hook_server) -> None:
    first, second = _slack(hook_server.url("/ok")), _slack(hook_server.url("/ok"))
    elsewhere = _slack(hook_server.url("/ok?channel=2"))
    assert services.delivery_attempt(delivery_id=first.pk) is None
    wait = services.delivery_attempt(delivery_id=second.pk)
    assert 0 < wait <= 1
    second.refresh_from_db()
    # Paced, not failed: no attempt is spent or recorded, and the row is due when the slot opens.
    assert (second.status, second.attempts, second.claimed_until) == (DeliveryStatus.PENDING, 0, None)
    assert not second.attempt_log.exists()
    assert services.delivery_attempt(delivery_id=second.pk) is None  # not due yet
    assert services.delivery_attempt(delivery_id=elsewhere.pk) is None  # another URL has its own pace
    time.sleep(wait + 0.05)
    assert services.delivery_attempt(delivery_id=second.pk) is None
    times = [r.at for r in hook_server.received if r.path == "/ok"]
    assert len(times) == 2 and times[1] - times[0] >= 1.0
    assert Delivery.objects.get(pk=second.pk).status == DeliveryStatus.SUCCEEDED
    # The pacing table holds a hash of the URL, never the URL.
    assert all("127.0.0.1" not in key for key in DeliveryThrottle.objects.values_list("key", flat=True))


@pytest.mark.django_db(transaction=True)
def test_the_pace_holds_across_concurrent_workers() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent claims need a database server")
    key = SlackTransport().throttle_key({"url": "https://hooks.slack.com/services/T1/B1/abc"})
    DeliveryThrottle.objects.create(key=key, next_allowed_at=timezone.now() - timedelta(seconds=5))
    barrier = threading.Barrier(6)
    waits: list[float] = []

    def worker() -> None:
        barrier.wait()
        try:
            waits.append(services._throttle_take(key))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits)[0] == 0.0 and all(wait > 0 for wait in sorted(waits)[1:])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTabcd",
            "https://hooks.slack.com/services/T…/…/••••abcd",
        ),
        ("https://example.com/hook/xyz9876", "https://example.com/••••9876"),
        ("http://127.0.0.1:8080/hooks/abcdefgh?token=secret", "http://127.0.0.1:8080/••••efgh"),
    ],
)
def test_the_url_is_masked(url, shown) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("17", 17.0), ("0", 1.0), ("86400", 3600.0), ("soon", None), (None, None)],
)
def test_retry_after_is_read_and_bounded(header, seconds) -> None:
    from apps.core.notifications.http import retry_after_seconds

    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    from email.utils import format_datetime

    from apps.core.notifications.http import retry_after_seconds

    assert 25 < retry_after_seconds(format_datetime(timezone.now() + timedelta(seconds=30), usegmt=True)) <= 30
