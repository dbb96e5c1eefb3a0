from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.core.models import APIToken, AuditEntry, Job, Membership, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "required_approvals", "created_at"]
    search_fields = ["name", "slug"]
    # Approvals and retention are project settings changed through `project_update` (audited), never here.
    readonly_fields = [
        "slug",
        "name_key",
        "required_approvals",
        "prediction_log_retention_days",
        "prediction_rollup_retention_days",
        "created_at",
    ]
    inlines = [MembershipInline]


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["user", "name", "prefix", "key_hash", "created_at", "last_used_at"]
    search_fields = ["name", "user__username", "prefix"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: the audit log is written by services and never edited."""

    list_display = ["created_at", "actor_name", "action", "object_type", "object_repr", "project", "ip_address"]
    list_filter = ["action", "object_type", "project"]
    search_fields = ["actor_name", "object_repr", "object_id", "message"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "project", "status", "progress", "created_at", "finished_at"]
    list_filter = ["kind", "status"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# The notification outbox registers its own admin.
from apps.core.notifications import admin as notifications_admin  # noqa: E402, F401
