"""The outbox in the Django admin: read-only, with every attempt; the target is shown masked, never raw."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.core.notifications.models import Delivery, DeliveryAttempt


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "outcome", "url", "status_code", "error", "duration_ms", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "channel", "recipient", "subject", "status", "attempts", "next_attempt_at"]
    list_filter = ["channel", "status"]
    search_fields = ["recipient", "source"]
    # `target` may hold a secret (a Slack URL, a webhook's HMAC key): only its masked form is shown.
    fields = [
        "channel",
        "recipient",
        "source",
        "message",
        "status",
        "attempts",
        "next_attempt_at",
        "claimed_until",
        "delivered_at",
        "last_error",
        "created_at",
    ]
    readonly_fields = fields
    inlines = [DeliveryAttemptInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False
