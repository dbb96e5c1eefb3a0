"""The registry in the Django admin: read-only records, and approve/reject actions that call the same services
as the UI and the API (so four eyes, gate checks and row locks apply here too)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.exceptions import DomainError
from apps.registry import services
from apps.registry.models import (
    ModelAlias,
    ModelVersion,
    PromotionApproval,
    PromotionRequest,
    RegisteredModel,
    RegistryEvent,
    Webhook,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows made by services; the admin shows them and never edits or deletes them (a change must be audited:
    deleting an alias or a request would change what serves, or erase the record of an approval)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "last_version_number", "created_by", "updated_at"]
    list_filter = ["project"]
    search_fields = ["name", "description"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "label", "stage", "flavor", "source", "validation_passed", "created_at"]
    list_filter = ["stage", "flavor", "source"]
    search_fields = ["model__name", "sha256", "label"]


@admin.register(ModelAlias)
class ModelAliasAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "version", "updated_by", "updated_at"]


class PromotionApprovalInline(admin.TabularInline):
    model = PromotionApproval
    extra = 0
    can_delete = False
    readonly_fields = ["approver", "decision", "comment", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False


def _decide(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, decision: str) -> None:
    done = 0
    for promotion in queryset.select_related("model__project"):
        try:
            if decision == "approve":
                services.promotion_request_approve(
                    request=promotion, actor=request.user, comment="Approved in the Django admin."
                )
            else:
                services.promotion_request_reject(
                    request=promotion, actor=request.user, comment="Rejected in the Django admin."
                )
        except (ValidationError, DomainError) as exc:
            text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            modeladmin.message_user(request, f"#{promotion.pk}: {text}", level=messages.ERROR)
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{decision.capitalize()}d {done} request(s).", level=messages.SUCCESS)


@admin.register(PromotionRequest)
class PromotionRequestAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "requested_by", "required_approvals", "created_at", "expires_at"]
    list_filter = ["status", "target_stage"]
    search_fields = ["model__name", "comment"]
    inlines = [PromotionApprovalInline]
    actions = ["approve_requests", "reject_requests"]

    @admin.action(description="Approve the selected requests (as you; four eyes and gate checks apply)")
    def approve_requests(self, request: HttpRequest, queryset: QuerySet) -> None:
        _decide(self, request, queryset, "approve")

    @admin.action(description="Reject the selected requests")
    def reject_requests(self, request: HttpRequest, queryset: QuerySet) -> None:
        _decide(self, request, queryset, "reject")


@admin.register(RegistryEvent)
class RegistryEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "type", "project", "model", "actor", "dispatched_at"]
    list_filter = ["type", "project"]


@admin.register(Webhook)
class WebhookAdmin(ReadOnlyAdmin):
    """A Slack URL is a secret, and so is a webhook's HMAC key: the admin shows neither (the URL masked)."""

    list_display = ["shown_url", "kind", "project", "is_active", "created_at"]
    list_filter = ["kind"]
    fields = ["project", "kind", "shown_url", "event_types", "is_active", "created_by", "created_at"]
    readonly_fields = fields

    @admin.display(description="URL")
    def shown_url(self, webhook: Webhook) -> str:
        return webhook.shown_url
