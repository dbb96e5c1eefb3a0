"""Alerts in the Django admin: read-only (changes go through the services, which check roles and audit)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from apps.alerts.models import (
    Alert,
    AlertAction,
    AlertChannel,
    AlertNotification,
    AlertRule,
    AlertTransition,
    OwnerNotice,
    Silence,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(AlertRule)
class AlertRuleAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "project", "figure", "comparator", "threshold", "severity", "enabled", "evaluated_at"]
    list_filter = ["figure", "severity", "enabled"]
    search_fields = ["name"]
    exclude = ["channels"]


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["id", "rule", "deployment", "state", "value", "silenced", "state_changed_at"]
    list_filter = ["state", "silenced"]


@admin.register(AlertTransition)
class AlertTransitionAdmin(ReadOnlyAdmin):
    list_display = ["id", "alert", "from_state", "to_state", "value", "at"]
    list_filter = ["to_state"]


@admin.register(Silence)
class SilenceAdmin(ReadOnlyAdmin):
    list_display = ["id", "project", "rule", "deployment", "starts_at", "ends_at", "created_by"]


@admin.register(AlertChannel)
class AlertChannelAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "project", "kind", "shown"]
    exclude = ["config"]  # holds secrets


@admin.register(AlertNotification)
class AlertNotificationAdmin(ReadOnlyAdmin):
    list_display = ["id", "rule", "channel", "kind", "key", "created_at"]
    list_filter = ["kind"]


@admin.register(AlertAction)
class AlertActionAdmin(ReadOnlyAdmin):
    list_display = ["id", "rule", "pipeline_run", "promotion_request", "abtest", "error", "created_at"]


@admin.register(OwnerNotice)
class OwnerNoticeAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "project", "created_at", "read_at"]
