"""The delivery outbox: one row per message and target, with its attempts, and the pacing of rate-limited
targets. Imported by apps/core/models.py, so the rows belong to the core app."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from apps.core.notifications.choices import DeliveryOutcome, DeliveryStatus, NotificationChannel


class Delivery(models.Model):
    """One message to one target; claimed by one worker at a time, retried with backoff until it succeeds."""

    channel = models.CharField(max_length=16, choices=NotificationChannel.choices)
    target = models.JSONField(help_text="Where to send it (may hold secrets; never shown).")
    recipient = models.CharField(max_length=500, help_text="The target as it may be shown (secrets masked).")
    source = models.CharField(
        max_length=100, blank=True, db_index=True, help_text="What asked for it, e.g. registry.webhook:12."
    )
    message = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A worker holds the row until then; after that the sweep may take it."
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "core"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="core_delivery_due")]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.get_channel_display()} to {self.recipient}"

    @property
    def subject(self) -> str:
        return str(self.message.get("subject", ""))

    @property
    def status_colour(self) -> str:
        return DeliveryStatus.colour(self.status)


class DeliveryAttempt(models.Model):
    """One try: what came back (an HTTP status, an SMTP error, a refusal) and how long it took."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=16, choices=DeliveryOutcome.choices)
    url = models.CharField(max_length=500, blank=True, help_text="Where it went (after redirects; masked).")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "core"
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="core_delivery_attempt_unique")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.status_code or self.error[:40]}"


class DeliveryThrottle(models.Model):
    """The earliest time the next message may go to a paced target (a Slack webhook), shared by all workers."""

    key = models.CharField(max_length=100, primary_key=True, help_text="A hash of the target, never the secret.")
    next_allowed_at = models.DateTimeField()

    class Meta:
        app_label = "core"

    def __str__(self) -> str:
        return self.key
