"""The filters of the alerts lists, shared by the pages and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from apps.alerts.choices import AlertFigure, AlertSeverity, AlertState
from apps.core.filters import FlagFilter, IdFilter, ProjectFilter, StrictFilterSet


class AlertRuleFilterSet(StrictFilterSet):
    project = ProjectFilter()
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")
    figure = django_filters.ChoiceFilter(choices=AlertFigure.choices, empty_label="Any figure")
    severity = django_filters.ChoiceFilter(choices=AlertSeverity.choices, empty_label="Any severity")
    state = django_filters.ChoiceFilter(
        choices=AlertState.choices,
        method="filter_state",
        empty_label="Any state",
        help_text="Rules with an alert in it.",
    )
    enabled = FlagFilter(field_name="enabled", label="Enabled")

    def filter_state(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(alerts__state=value).distinct()


class AlertTransitionFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="alert__rule__project")
    rule = IdFilter(field_name="alert__rule_id", label="Rule", help_text="Rule id.")
    deployment = IdFilter(field_name="alert__deployment_id", label="Deployment", help_text="Deployment id.")
    state = django_filters.ChoiceFilter(
        field_name="to_state", choices=AlertState.choices, empty_label="Any state", help_text="The state entered."
    )


class AlertFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="rule__project")
    rule = IdFilter(field_name="rule_id", label="Rule", help_text="Rule id.")
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")
    state = django_filters.ChoiceFilter(choices=AlertState.choices, empty_label="Any state")
    silenced = FlagFilter(field_name="silenced", label="Silenced")


class SilenceFilterSet(StrictFilterSet):
    project = ProjectFilter()
    rule = IdFilter(field_name="rule_id", label="Rule", help_text="Rule id.")
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")


class AlertChannelFilterSet(StrictFilterSet):
    project = ProjectFilter()
