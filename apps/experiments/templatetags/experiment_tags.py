from __future__ import annotations

from typing import Any

from django import template

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import has_project_role
from apps.experiments import selectors
from apps.experiments.choices import PipelineRunStatus

register = template.Library()
PROJECT_SECTION_SIZE = 5


@register.filter
def status_colour(status: str) -> str:
    """The Bootstrap colour of any experiments status (run, pipeline, stage or study)."""
    return PipelineRunStatus.colour(status)


@register.filter
def metric(value: Any) -> str:
    """A metric in at most five significant digits; a dash when absent."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.5g}"


@register.filter
def get_item(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def mebibytes(value: Any) -> str:
    return "–" if not value else f"{value / 2**20:,.0f} MiB"


@register.filter
def seconds(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value < 100 else f"{value / 60:.1f} min"


@register.inclusion_tag("experiments/_project_section.html", takes_context=True)
def project_experiments(context: dict[str, Any], project: Project) -> dict[str, Any]:
    """The experiments and recent pipeline runs card on a project's page."""
    user = context["request"].user
    experiments = selectors.experiment_list(user=user, project=project.slug)
    pipelines = selectors.pipeline_run_list(user=user, project=project.slug)
    return {
        "project": project,
        "experiments": experiments[:PROJECT_SECTION_SIZE],
        "experiment_total": experiments.count(),
        "pipelines": pipelines[:PROJECT_SECTION_SIZE],
        "can_edit": has_project_role(user, project, ProjectRole.EDITOR),
    }
