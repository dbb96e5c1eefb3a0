"""The filters of the registry's lists (models, versions, promotion requests, notifications), shared by the
pages and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from apps.core.filters import FlagFilter, IdFilter, ProjectFilter, StrictFilterSet, name_search
from apps.registry import selectors
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus

SEARCH_HELP = "Name or description contains this (case and Unicode form do not matter)."


class RegisteredModelFilterSet(StrictFilterSet):
    project = ProjectFilter()
    q = django_filters.CharFilter(method=name_search, label="Search models", help_text=SEARCH_HELP)
    search = django_filters.CharFilter(method=name_search, help_text="The same as `q`.")


class ModelVersionFilterSet(StrictFilterSet):
    model = IdFilter(help_text="Only versions of this registered model (id).")
    project = ProjectFilter(field_name="model__project")
    stage = django_filters.ChoiceFilter(choices=ModelVersionStage.choices, help_text="Only versions in this stage.")


class PromotionRequestFilterSet(StrictFilterSet):
    status = django_filters.ChoiceFilter(
        choices=PromotionRequestStatus.choices, empty_label="Any status", label="Status"
    )
    project = ProjectFilter(field_name="model__project")
    model = IdFilter(help_text="Only requests for this registered model (id).")
    inbox = FlagFilter(method="filter_inbox", help_text="true: only open requests you can approve.")

    def filter_inbox(self, queryset: QuerySet, name: str, value: bool) -> QuerySet:
        if not value:
            return queryset
        return queryset.filter(pk__in=selectors.pending_approvals(self.request.user).values("pk"))


class WebhookFilterSet(StrictFilterSet):
    project = ProjectFilter()


class NotificationFilterSet(StrictFilterSet):
    show = django_filters.ChoiceFilter(
        choices=[("unread", "Unread only")], method="filter_show", help_text="unread: only unread notifications."
    )

    def filter_show(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(read_at__isnull=True)
