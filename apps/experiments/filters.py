"""The filters of the experiments, runs, pipeline runs and studies lists, shared by the pages and the API
(strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from apps.core.filters import FlagFilter, IdFilter, ProjectFilter, StrictFilterSet, name_search
from apps.experiments.choices import PipelineRunStatus, RunStatus, StudyStatus


class ExperimentFilterSet(StrictFilterSet):
    project = ProjectFilter()
    q = django_filters.CharFilter(
        method=name_search, label="Search experiments", help_text="Name or description contains this."
    )


class RunFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="experiment__project")
    experiment = IdFilter(help_text="Experiment id.")
    status = django_filters.ChoiceFilter(choices=RunStatus.choices, empty_label="Any status", label="Status")
    q = django_filters.CharFilter(method="filter_q", label="Name or algorithm", help_text="Name or algorithm contains.")
    parent = IdFilter(help_text="Children of this run (HPO trials).")
    top_level = FlagFilter(method="filter_top_level", help_text="true: only runs without a parent.")
    pipeline_run = IdFilter(help_text="Runs of this pipeline run.")
    study = IdFilter(help_text="Trials of this study.")

    def filter_q(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(Q(name__icontains=value) | Q(algorithm__icontains=value))

    def filter_top_level(self, queryset: QuerySet, name: str, value: bool) -> QuerySet:
        return queryset.filter(parent__isnull=True) if value else queryset


class PipelineRunFilterSet(StrictFilterSet):
    project = ProjectFilter()
    status = django_filters.ChoiceFilter(choices=PipelineRunStatus.choices, empty_label="Any status", label="Status")
    experiment = IdFilter(help_text="Experiment id.")


class StudyFilterSet(StrictFilterSet):
    project = ProjectFilter()
    status = django_filters.ChoiceFilter(choices=StudyStatus.choices, empty_label="Any status", label="Status")
