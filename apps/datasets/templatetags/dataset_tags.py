from __future__ import annotations

from typing import Any

from django import template

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import has_project_role
from apps.datasets import selectors
from apps.datasets.choices import DatasetVersionStatus, ValidationStatus

register = template.Library()
PROJECT_SECTION_SIZE = 5


@register.filter
def validation_colour(status: str) -> str:
    return ValidationStatus.colour(status)


@register.filter
def version_status_colour(status: str) -> str:
    return DatasetVersionStatus.colour(status)


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    """A rate from 0 to 1 as a percentage; a dash when there is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{value * 100:.{digits}f}%"


@register.filter
def number(value: Any) -> str:
    """A statistic in at most four significant digits (large values keep their integer part)."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


@register.inclusion_tag("datasets/_project_section.html", takes_context=True)
def project_datasets(context: dict[str, Any], project: Project) -> dict[str, Any]:
    """The datasets card on a project's page."""
    user = context["request"].user
    datasets = selectors.dataset_list(user=user, project=project.slug).order_by("-updated_at")
    rows = [(dataset, selectors.latest_version(dataset)) for dataset in datasets[:PROJECT_SECTION_SIZE]]
    return {
        "project": project,
        "rows": rows,
        "total": datasets.count(),
        "can_edit": has_project_role(user, project, ProjectRole.EDITOR),
    }
