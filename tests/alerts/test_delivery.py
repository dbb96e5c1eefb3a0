"""Alert notifications through the core outbox against real receivers (a local HTTP server, aiosmtpd): email in
text and HTML, Slack Block Kit with its fallback, signed webhooks, a receiver down then up (each notification
arrives exactly once), Slack's 429, a hanging receiver, the test notification, and the owners told in the
console when a delivery is finally given up."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import AlertNotification, OwnerNotice
from apps.core.notifications import services as outbox
from apps.core.notifications.channels import TRANSPORTS
from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus
from apps.core.notifications.message import Message
from apps.core.notifications.models import Delivery
from apps.core.notifications.tasks import notifications_deliver_due_task
from tests.alerts.conftest import write_minutes

pytestmark = pytest.mark.django_db


def firing_rule(project: Any, owner: Any, deployment: Any, channel: Any) -> Any:
    return services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        channels=[channel],
        name="errors",
        figure="error_rate",
        comparator="gt",
        threshold=0.01,
        runbook_url="https://runbooks.example.com/errors",
    )


def fire_then_resolve(deployment: Any, capture: Any) -> None:
    now = timezone.now()
    write_minutes(deployment, minutes=5, errors=10)
    with capture(execute=True):
        services.alert_rules_evaluate_due(now=now)
    write_minutes(deployment, minutes=6, errors=0, end=now + timedelta(minutes=10))
    with capture(execute=True):
        services.alert_rules_evaluate_due(now=now + timedelta(minutes=10))


def make_all_due() -> None:
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))


def test_email_in_text_and_html_with_a_stable_message_id(
    project, owner, deployment, smtp_sink, django_capture_on_commit_callbacks
) -> None:
    channel = services.alert_channel_create(
        project=project, actor=owner, name="oncall", kind="email", config={"addresses": "a@example.com, b@example.com"}
    )
    firing_rule(project, owner, deployment, channel)
    fire_then_resolve(deployment, django_capture_on_commit_callbacks)
    assert sorted(envelope.rcpt_tos[0] for envelope in smtp_sink) == ["a@example.com"] * 2 + ["b@example.com"] * 2
    mail = email.message_from_bytes(smtp_sink[0].content)
    assert mail["Subject"] == f"[FIRING:1] errors ({project.name})"
    key = AlertNotification.objects.get(kind="firing").key
    assert mail["Message-ID"].startswith(f"<{key}.")
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in mail.walk()
        if not part.is_multipart()
    }
    assert "Error rate (5xx share) > 0.01 on deployment iris." in parts["text/plain"]
    assert "Runbook:" in parts["text/plain"] and "https://runbooks.example.com/errors" in parts["text/plain"]
    assert "<h2>[FIRING:1] errors" in parts["text/html"] and "/alerts/rules/" in parts["text/html"]
    subjects = sorted(email.message_from_bytes(envelope.content)["Subject"] for envelope in smtp_sink)
    assert subjects[-1].startswith("[RESOLVED] errors")


def test_slack_block_kit_with_a_fallback_and_a_link_to_the_console(
    project, owner, deployment, hook_server, django_capture_on_commit_callbacks
) -> None:
    channel = services.alert_channel_create(
        project=project,
        actor=owner,
        name="slack",
        kind="slack",
        config={"url": hook_server.url("/services/T0/B0/secret")},
    )
    assert channel.shown == "http://127.0.0.1/services/T…/…/••••cret"
    rule = firing_rule(project, owner, deployment, channel)
    fire_then_resolve(deployment, django_capture_on_commit_callbacks)
    # Slack takes one message per second per webhook: the second waits for its slot, then the sweep sends it.
    time.sleep(1.1)
    make_all_due()
    notifications_deliver_due_task()
    firing, resolved = (json.loads(received.body) for received in hook_server.received)
    assert firing["text"].startswith("[FIRING:1] errors") and firing["text"].endswith(rule.get_absolute_url())
    assert firing["blocks"][0]["type"] == "header"
    assert firing["blocks"][0]["text"]["text"] == f"[FIRING:1] errors ({project.name})"
    [button] = firing["blocks"][-1]["elements"]
    assert button["url"].endswith(rule.get_absolute_url())
    assert resolved["text"].startswith("[RESOLVED] errors")
    assert Delivery.objects.filter(recipient__contains="secret").count() == 0  # the URL is a secret


def test_webhooks_are_signed_and_carry_the_idempotency_key(
    project, owner, deployment, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    firing_rule(project, owner, deployment, webhook_channel)
    fire_then_resolve(deployment, django_capture_on_commit_callbacks)
    assert len(hook_server.received) == 2
    for received, notification in zip(hook_server.received, AlertNotification.objects.order_by("pk"), strict=True):
        timestamp = received.headers["x-mlops-timestamp"]
        digest = hmac.new(
            b"a-long-enough-secret", timestamp.encode() + b"." + received.body, hashlib.sha256
        ).hexdigest()
        assert received.headers["x-mlops-signature"] == f"sha256={digest}"
        assert json.loads(received.body)["idempotency_key"] == str(notification.key)


def test_a_receiver_down_then_up_gets_each_notification_exactly_once(
    project, owner, deployment, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    hook_server.script = [500] * 4 + [503] * 2  # down for the firing and the resolved notifications' first tries
    firing_rule(project, owner, deployment, webhook_channel)
    fire_then_resolve(deployment, django_capture_on_commit_callbacks)
    for _ in range(4):  # the beat's sweep, while the receiver comes back up
        make_all_due()
        notifications_deliver_due_task()
        with django_capture_on_commit_callbacks(execute=True):
            services.alert_rules_evaluate_due(now=timezone.now() + timedelta(minutes=11))
    accepted = [json.loads(r.body) for r in hook_server.received[-2:]]
    assert len(hook_server.received) == 8  # 6 refused tries, then one accepted per notification
    assert sorted(body["type"] for body in accepted) == ["alert.firing", "alert.resolved"]
    assert len({body["idempotency_key"] for body in accepted}) == 2
    for delivery in Delivery.objects.all():
        assert delivery.status == DeliveryStatus.SUCCEEDED
        outcomes = list(delivery.attempt_log.values_list("outcome", flat=True))
        assert outcomes[-1] == DeliveryOutcome.SUCCEEDED and outcomes.count(DeliveryOutcome.SUCCEEDED) == 1


def test_a_429_waits_for_retry_after_and_a_hanging_receiver_times_out(
    settings, project, owner, deployment, hook_server
) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    limited = services.alert_channel_create(
        project=project, actor=owner, name="limited", kind="slack", config={"url": hook_server.url("/limited")}
    )
    hanging = services.alert_channel_create(
        project=project,
        actor=owner,
        name="hang",
        kind="webhook",
        config={"url": hook_server.url("/hang"), "secret": "a-long-enough-secret"},
    )
    hook_server.retry_after = "7"
    services.alert_channel_test(channel=limited, actor=owner)
    services.alert_channel_test(channel=hanging, actor=owner)
    first, second = Delivery.objects.order_by("pk")
    assert outbox.delivery_attempt(delivery_id=first.pk) == 7.0
    assert first.attempt_log.get().outcome == DeliveryOutcome.RATE_LIMITED
    assert outbox.delivery_attempt(delivery_id=second.pk) == 30
    assert "timed out" in second.attempt_log.get().error


def test_a_delivery_given_up_tells_the_owners_in_the_console(project, owner, viewer, deployment, hook_server) -> None:
    channel = services.alert_channel_create(
        project=project,
        actor=owner,
        name="gone",
        kind="webhook",
        config={"url": hook_server.url("/gone"), "secret": "a-long-enough-secret"},
    )
    services.alert_channel_test(channel=channel, actor=owner)
    delivery = Delivery.objects.get()
    assert outbox.delivery_attempt(delivery_id=delivery.pk) is None
    [notice] = OwnerNotice.objects.all()
    assert notice.user == owner and notice.delivery == delivery
    assert "could not be delivered after 1 attempts: HTTP 410" in notice.text
    assert not OwnerNotice.objects.filter(user=viewer).exists()


def test_a_private_webhook_address_is_refused_naming_the_field(settings, project, owner) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    from apps.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        services.alert_channel_create(
            project=project,
            actor=owner,
            name="internal",
            kind="webhook",
            config={"url": "http://10.0.0.5/hook", "secret": "a-long-enough-secret"},
        )
    assert refused.value.field == "url" and "private" in str(refused.value)


def test_a_worker_killed_after_sending_makes_a_duplicate_with_the_same_key(
    project, owner, deployment, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    """The worker claimed the delivery and sent it, then died before recording the attempt (its lease runs out):
    the sweep sends it again, and the receiver sees the same idempotency key twice, so it keeps one."""
    firing_rule(project, owner, deployment, webhook_channel)
    write_minutes(deployment, minutes=5, errors=10)
    services.alert_rules_evaluate_due()  # the outbox row is committed; its queue message is lost
    delivery = Delivery.objects.get()
    claimed = outbox.delivery_claim(delivery_id=delivery.pk)
    TRANSPORTS["webhook"].send(
        target=claimed.target, message=Message.from_json(claimed.message), delivery_id=delivery.pk
    )
    Delivery.objects.filter(pk=delivery.pk).update(
        claimed_until=timezone.now() - timedelta(seconds=1), next_attempt_at=timezone.now() - timedelta(minutes=5)
    )
    assert notifications_deliver_due_task() == 1
    first, second = (json.loads(received.body) for received in hook_server.received)
    assert first == second and first["idempotency_key"] == str(AlertNotification.objects.get().key)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 1
