from __future__ import annotations

from django.contrib import admin

from apps.deployments.models import Deployment, DeploymentEvent, DeploymentTarget


class DeploymentTargetInline(admin.TabularInline):
    model = DeploymentTarget
    extra = 0
    raw_id_fields = ["model_version"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "registered_model", "environment", "backend", "strategy", "phase", "status"]
    list_filter = ["status", "backend", "environment", "strategy"]
    search_fields = ["name"]
    inlines = [DeploymentTargetInline]
    readonly_fields = [
        "generation",
        "applied_generation",
        "applied_spec",
        "observed",
        "observed_at",
        "strategy_state",
        "rollback_spec",
        "reconcile_lease_until",
    ]


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(admin.ModelAdmin):
    list_display = ["deployment", "kind", "message", "created_at"]
    list_filter = ["kind"]
    readonly_fields = ["deployment", "kind", "message", "data", "generation", "actor", "created_at"]
