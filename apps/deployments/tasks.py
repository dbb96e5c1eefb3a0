"""Celery tasks of deployments: thin wrappers that take ids and call one service. Each is safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.deployments import services


@shared_task(
    name="deployments.reconcile", acks_late=True, reject_on_worker_lost=True, soft_time_limit=600, time_limit=630
)
def deployment_reconcile_task(deployment_id: int) -> str:
    """Make the backend match one deployment (the lease in the service keeps a second run from acting)."""
    return services.deployment_reconcile(deployment_id=deployment_id)


@shared_task(name="deployments.reconcile_all", soft_time_limit=30, time_limit=45)
def deployments_reconcile_all_task() -> int:
    """Beat: queue a reconcile of every deployment that runs or should run."""
    ids = services.deployments_to_reconcile()
    for deployment_id in ids:
        deployment_reconcile_task.delay(deployment_id)
    return len(ids)


@shared_task(
    name="deployments.rollout_approved", acks_late=True, reject_on_worker_lost=True, soft_time_limit=60, time_limit=90
)
def deployment_rollout_approved_task(deployment_id: int, model_version_id: int) -> str:
    """Roll out a version approved for production on a deployment that follows its model."""
    from apps.deployments import hooks

    return hooks.deployment_rollout_approved(deployment_id=deployment_id, model_version_id=model_version_id)
