from __future__ import annotations

from django.contrib import admin

from apps.abtests.models import ABTest, ABTestArm, ABTestReadout, Outcome


class ABTestArmInline(admin.TabularInline):
    model = ABTestArm
    extra = 0
    readonly_fields = ["model_version", "weight", "position"]
    can_delete = False


@admin.register(ABTest)
class ABTestAdmin(admin.ModelAdmin):
    """Read-mostly: the lifecycle (start, stop, promote) goes through the services, from the pages or the API."""

    list_display = ["id", "name", "deployment", "status", "primary_metric", "decision", "started_at", "stopped_at"]
    list_filter = ["status", "primary_metric"]
    search_fields = ["name", "deployment__name"]
    inlines = [ABTestArmInline]
    readonly_fields = [
        "status",
        "decision",
        "decision_reason",
        "winner",
        "promotion_request",
        "started_at",
        "stopped_at",
    ]


@admin.register(Outcome)
class OutcomeAdmin(admin.ModelAdmin):
    list_display = ["id", "abtest", "key_type", "key", "model_version", "value", "received_at"]
    list_filter = ["key_type"]
    search_fields = ["key"]


@admin.register(ABTestReadout)
class ABTestReadoutAdmin(admin.ModelAdmin):
    list_display = ["id", "abtest", "as_of", "decision", "srm_p_value", "srm_invalid"]
    list_filter = ["decision", "srm_invalid"]
    readonly_fields = ["result"]
