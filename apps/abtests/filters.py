"""The filters of the A/B test list, shared by the page and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters

from apps.abtests.choices import ABTestStatus
from apps.core.filters import IdFilter, ProjectFilter, StrictFilterSet


class ABTestFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="deployment__project")
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")
    status = django_filters.ChoiceFilter(choices=ABTestStatus.choices, empty_label="Any status")
