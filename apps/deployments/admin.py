"""Deployments in the Django admin, read-only: what serves changes only through the services (the UI, the API,
`manage.py deploy`), so that the production gate, the generation check and the audit log always apply."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.deployments.models import Deployment, DeploymentEvent, DeploymentTarget


class ReadOnlyAdminMixin:
    """No add, change or delete: the admin shows these rows; a change must pass the services' checks."""

    def has_add_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False


class DeploymentTargetInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = DeploymentTarget
    extra = 0


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "project", "registered_model", "environment", "backend", "strategy", "phase", "status"]
    list_filter = ["status", "backend", "environment", "strategy"]
    search_fields = ["name"]
    inlines = [DeploymentTargetInline]


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["deployment", "kind", "message", "created_at"]
    list_filter = ["kind"]
