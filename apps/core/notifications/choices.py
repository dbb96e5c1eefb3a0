from __future__ import annotations

from django.db import models


class NotificationChannel(models.TextChoices):
    """How a message travels; each has a transport in apps/core/notifications/<channel>/."""

    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"
    SLACK = "slack", "Slack"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"

    @classmethod
    def colour(cls, status: str) -> str:
        return {"pending": "secondary", "retrying": "warning", "succeeded": "success", "failed": "danger"}[status]


class DeliveryOutcome(models.TextChoices):
    """What one attempt ended with."""

    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (retried)"
    REFUSED = "refused", "Refused (final)"
    RATE_LIMITED = "rate_limited", "Rate limited (retried after Retry-After)"
