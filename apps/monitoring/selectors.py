"""Reads of drift monitoring for the pages and the API."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.deployments.models import Deployment
from apps.monitoring.models import DriftReport

# The drift share chart shows at most this many of a deployment's latest reports.
HISTORY_LIMIT = 500


def drift_reports(*, user: object) -> QuerySet[DriftReport]:
    return DriftReport.objects.for_user(user).select_related(
        "deployment", "deployment__project", "model_version", "reference", "job"
    )


def drift_history(*, deployment: Deployment) -> list[DriftReport]:
    """The deployment's finished reports with a drift share, oldest first (the latest HISTORY_LIMIT)."""
    latest = (
        DriftReport.objects.filter(deployment=deployment, drift_share__isnull=False)
        .only("id", "window_end", "drift_share", "dataset_drift")
        .order_by("-window_end")[:HISTORY_LIMIT]
    )
    return list(reversed(latest))
