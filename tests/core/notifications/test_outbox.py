"""The outbox against real receivers: claims, retries with backoff, every attempt recorded, the sweep, and a
worker SIGKILLed between its claim and its send (the delivery is then sent exactly once)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.notifications import services
from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus
from apps.core.notifications.http import check_url
from apps.core.notifications.message import Message
from apps.core.notifications.models import Delivery
from apps.core.notifications.tasks import notifications_deliver_due_task

pytestmark = pytest.mark.django_db

SECRET = "s3cret-key"
MESSAGE = Message(
    subject="Model approved",
    text="alice approved moving iris v3 to production.",
    fields=(("Model", "iris"), ("Version", "version 3")),
    link="https://console.example.com/approvals/7/",
    kind="request.approved",
    data={"id": 41, "data": {"comment": "ok"}},
)


@pytest.fixture(autouse=True)
def private_addresses_allowed(settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True


def _webhook(url: str, message: Message = MESSAGE) -> Delivery:
    return services.notification_enqueue(
        channel="webhook", target={"url": url, "secret": SECRET}, message=message, source="test:1"
    )


def _make_due(delivery: Delivery) -> None:
    """The clock moved past the next attempt's time."""
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def test_a_delivery_is_queued_on_commit_and_signed(hook_server, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        delivery = _webhook(hook_server.url("/ok"))
        assert hook_server.received == []  # nothing leaves before the producer's transaction commits
    [received] = hook_server.received
    timestamp = received.headers["x-mlops-timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-mlops-signature"] == f"sha256={expected}"
    assert received.headers["x-mlops-event"] == "request.approved"
    assert received.headers["x-mlops-delivery"] == str(delivery.pk)
    body = json.loads(received.body)
    assert body == {
        "id": 41,
        "data": {"comment": "ok"},
        "type": "request.approved",
        "subject": "Model approved",
        "text": "alice approved moving iris v3 to production.",
        "fields": {"Model": "iris", "Version": "version 3"},
        "url": "https://console.example.com/approvals/7/",
    }
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == (DeliveryStatus.SUCCEEDED, 1, None)
    assert delivery.delivered_at is not None
    attempt = delivery.attempt_log.get()
    assert (attempt.outcome, attempt.status_code, attempt.error) == (DeliveryOutcome.SUCCEEDED, 204, "")
    assert attempt.duration_ms > 0 and attempt.url == f"http://127.0.0.1:{hook_server.port}/••••ok", (
        "the URL is kept masked"
    )


def test_failures_back_off_and_every_attempt_is_recorded(hook_server) -> None:
    delivery = _webhook(hook_server.url("/fail"))
    waits = []
    for number in range(1, services.MAX_ATTEMPTS + 1):
        before = timezone.now()
        waits.append(services.delivery_attempt(delivery_id=delivery.pk))
        delivery.refresh_from_db()
        assert delivery.attempts == number and len(hook_server.received) == number
        if number < services.MAX_ATTEMPTS:
            assert delivery.status == DeliveryStatus.RETRYING and delivery.last_error == "HTTP 500"
            # Not due yet: a second worker (or an eager retry) gets nothing.
            assert services.delivery_attempt(delivery_id=delivery.pk) is None
            assert abs((delivery.next_attempt_at - before).total_seconds() - waits[-1]) < 5
            _make_due(delivery)
    assert waits[:6] == [30, 60, 120, 240, 480, 960] and waits[-1] is None
    # A receiver that stays down is retried for 24 h (once an hour at the end), then given up.
    assert 24 * 3600 <= sum(waits[:-1]) < 25 * 3600 and set(waits[8:-1]) == {3600}
    assert delivery.status == DeliveryStatus.FAILED
    attempts = list(delivery.attempt_log.values_list("number", "outcome", "status_code"))
    assert attempts == [(n, DeliveryOutcome.FAILED, 500) for n in range(1, services.MAX_ATTEMPTS + 1)]
    assert [services.backoff_seconds(n) for n in (1, 2, 3, 7, 8, 20)] == [30, 60, 120, 1920, 3600, 3600]


def test_a_gone_endpoint_is_final(hook_server) -> None:
    delivery = _webhook(hook_server.url("/gone"))
    assert services.delivery_attempt(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert delivery.attempt_log.get().outcome == DeliveryOutcome.REFUSED


def test_a_hanging_receiver_times_out_and_is_retried(settings, hook_server) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    delivery = _webhook(hook_server.url("/hang"))
    started = time.monotonic()
    assert services.delivery_attempt(delivery_id=delivery.pk) == 30
    assert time.monotonic() - started < hook_server.hang_seconds
    attempt = Delivery.objects.get(pk=delivery.pk).attempt_log.get()
    assert attempt.status_code is None and "timed out" in attempt.error and attempt.outcome == DeliveryOutcome.FAILED


def test_a_loopback_address_is_refused_at_delivery_and_at_creation(settings, hook_server) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    delivery = _webhook(f"http://localhost:{hook_server.port}/ok")
    assert services.delivery_attempt(delivery_id=delivery.pk) is None
    attempt = Delivery.objects.get(pk=delivery.pk).attempt_log.get()
    assert attempt.outcome == DeliveryOutcome.REFUSED and "127.0.0.1" in attempt.error
    assert hook_server.received == []
    with pytest.raises(ValidationError) as error:
        check_url("http://169.254.169.254/latest/meta-data", field="url")
    assert "url" in error.value.message_dict


def test_one_claim_wins_and_the_sweep_skips_held_and_future_rows(hook_server) -> None:
    held, later, due = (_webhook(hook_server.url("/ok")) for _ in range(3))
    assert services.delivery_claim(delivery_id=held.pk) is not None
    assert services.delivery_claim(delivery_id=held.pk) is None  # the lease is held
    Delivery.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    # A row just due is left to its own queue message for a while; then the sweep takes it as lost.
    assert services.deliveries_due_ids() == []
    Delivery.objects.filter(pk=due.pk).update(next_attempt_at=timezone.now() - services.SWEEP_GRACE)
    assert services.deliveries_due_ids() == [due.pk]
    assert notifications_deliver_due_task() == 1
    assert [r.path for r in hook_server.received] == ["/ok"]
    assert Delivery.objects.get(pk=due.pk).status == DeliveryStatus.SUCCEEDED


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notification channel 'pager'"):
        services.notification_enqueue(channel="pager", target={}, message=MESSAGE)
    assert not Delivery.objects.exists()


# A worker killed between its claim and its send.

WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import django

    django.setup()
    from apps.core.notifications import services
    from apps.core.notifications.webhook import transport

    def killed_before_sending(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    transport.post = killed_before_sending
    services.delivery_attempt(delivery_id=int(sys.argv[1]))
    """
)


@contextmanager
def lost_queue_messages() -> Iterator[None]:
    """Rows are committed but their Celery messages never arrive (a broker outage), so only what the test
    runs touches them. Committed rows run their on-commit callbacks at once, hence the patch of `apply_async`."""
    from apps.core.notifications.tasks import notification_deliver_task

    with mock.patch.object(notification_deliver_task, "apply_async"):
        yield


def run_killed_worker(script: str, *args: str, lease_seconds: int) -> None:
    """Run `script` in a fresh Python process on the test database; it must die by SIGKILL."""
    from django.db import connection

    env = {
        **os.environ,
        "DATABASE_URL": "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(**connection.settings_dict),
        "NOTIFICATIONS_CLAIM_LEASE_SECONDS": str(lease_seconds),
        "DJANGO_SETTINGS_MODULE": "mlops_console.settings",
    }
    root = Path(__file__).resolve().parents[3]
    process = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=root, capture_output=True, timeout=120, check=False
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_claim_and_send_leads_to_exactly_one_delivery(hook_server) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the killed worker is a second process; it needs a database server (DATABASE_URL)")
    with lost_queue_messages():
        delivery = _webhook(hook_server.url("/ok"))
    run_killed_worker(WORKER, str(delivery.pk), lease_seconds=3)
    delivery.refresh_from_db()
    # Claimed, nothing sent, nothing recorded: the lease keeps the sweep off it until it runs out.
    assert hook_server.received == [] and delivery.claimed_until is not None
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 0)
    if delivery.claimed_until > timezone.now():
        assert notifications_deliver_due_task() == 0
        time.sleep((delivery.claimed_until - timezone.now()).total_seconds() + 0.2)
    assert notifications_deliver_due_task() == 1
    assert notifications_deliver_due_task() == 0
    assert len(hook_server.received) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 1)
