"""Email through a real SMTP server (aiosmtpd), and an unreachable server recorded as a failed attempt."""

from __future__ import annotations

import pytest

from apps.core.notifications import services
from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus
from apps.core.notifications.message import Message
from tests.core.notifications.sinks import free_port

pytestmark = pytest.mark.django_db

MESSAGE = Message(
    subject="[demo] Drift on iris",
    text="Feature petal_width drifted.",
    fields=(("Deployment", "iris-prod"), ("PSI", "0.31")),
    link="https://console.example.com/deployments/4/",
)


def test_a_mail_is_sent_and_recorded(smtp_sink) -> None:
    delivery = services.notification_enqueue(channel="email", target={"to": "ops@example.com"}, message=MESSAGE)
    assert services.delivery_attempt(delivery_id=delivery.pk) is None
    [envelope] = smtp_sink
    assert envelope.rcpt_tos == ["ops@example.com"]
    content = envelope.content.decode()
    assert "Subject: [demo] Drift on iris" in content
    assert "Feature petal_width drifted." in content
    assert "Deployment: iris-prod" in content and "PSI:        0.31" in content
    assert "Open it in the console: https://console.example.com/deployments/4/" in content
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempt_log.get().outcome == DeliveryOutcome.SUCCEEDED


def test_an_unreachable_smtp_server_is_a_failed_attempt_retried(settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 5
    delivery = services.notification_enqueue(channel="email", target={"to": "ops@example.com"}, message=MESSAGE)
    assert services.delivery_attempt(delivery_id=delivery.pk) == 30
    delivery.refresh_from_db()
    attempt = delivery.attempt_log.get()
    assert delivery.status == DeliveryStatus.RETRYING
    assert attempt.outcome == DeliveryOutcome.FAILED and "ConnectionRefusedError" in attempt.error
