"""The filters of the deployments list, shared by the page and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters

from apps.core.filters import ProjectFilter, StrictFilterSet
from apps.deployments.choices import DeploymentStatus


class DeploymentFilterSet(StrictFilterSet):
    project = ProjectFilter()
    status = django_filters.ChoiceFilter(choices=DeploymentStatus.choices, empty_label="Any status", label="Status")
