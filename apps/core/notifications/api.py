"""Serializers of the outbox, for the apps that show their deliveries in their API (read-only)."""

from __future__ import annotations

from rest_framework import serializers

from apps.core.notifications.models import Delivery, DeliveryAttempt


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "outcome", "url", "status_code", "error", "duration_ms", "created_at"]


class DeliverySerializer(serializers.ModelSerializer):
    """A delivery with every attempt; `recipient` is the target with its secrets masked (the target never)."""

    subject = serializers.CharField(read_only=True)
    kind = serializers.CharField(source="message.kind", read_only=True, help_text="What happened, e.g. an event type.")
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "channel",
            "recipient",
            "kind",
            "subject",
            "status",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "last_error",
            "created_at",
            "attempt_log",
        ]
