"""The filters of the drift report list, shared by the page and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

from apps.core.filters import FlagFilter, IdFilter, ProjectFilter, StrictFilterSet


class DriftReportFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="deployment__project")
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")
    # Both values narrow: true lists the drifted reports, false those that did not drift (not the untested).
    drifted = FlagFilter(
        field_name="dataset_drift", label="Drifted", help_text="true: dataset drift; false: no dataset drift."
    )


class DriftReferenceFilterSet(StrictFilterSet):
    project = ProjectFilter(field_name="deployment__project")
    deployment = IdFilter(field_name="deployment_id", label="Deployment", help_text="Deployment id.")
