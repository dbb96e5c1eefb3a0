"""Celery tasks of the datasets app: thin wrappers that take ids and call one service."""

from __future__ import annotations

from celery import shared_task

# A 2 GB upload profiles in a few minutes; anything near half an hour is stuck, not slow.
PROFILE_SOFT_TIME_LIMIT = 30 * 60
PROFILE_TIME_LIMIT = PROFILE_SOFT_TIME_LIMIT + 2 * 60


@shared_task(
    name="datasets.profile_version",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=PROFILE_SOFT_TIME_LIMIT,
    time_limit=PROFILE_TIME_LIMIT,
)
def dataset_version_profile_task(version_id: int) -> None:
    """Profile and validate one version. Safe to run twice: the service claims the version first."""
    # Imported here because the services module queues this task.
    from apps.datasets.services import dataset_version_profile

    dataset_version_profile(version_id=version_id)


@shared_task(name="datasets.requeue_stale_versions", soft_time_limit=60, time_limit=90)
def dataset_versions_requeue_stale_task() -> int:
    """Queue again versions whose profiling message was lost or whose worker died (run by beat)."""
    from apps.datasets.services import dataset_versions_requeue_stale

    return dataset_versions_requeue_stale()
