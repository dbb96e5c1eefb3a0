"""Celery tasks of the experiments app: thin wrappers that take ids and call one service.

Stage and trial tasks are `acks_late` with `reject_on_worker_lost`: when the worker process running
one dies (SIGKILL, out of memory), the message goes back to the queue and the redelivered task takes
over from the dead attempt once (the services claim rows conditionally and count attempts).
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

REAP_SOFT_TIME_LIMIT = 120


@shared_task(
    name="experiments.run_pipeline_stage",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.EXPERIMENTS_STAGE_SOFT_TIME_LIMIT,
    time_limit=settings.EXPERIMENTS_STAGE_SOFT_TIME_LIMIT + 120,
)
def pipeline_stage_task(self: object, stage_id: int) -> None:
    from apps.experiments.services import pipeline_stage_execute

    pipeline_stage_execute(stage_id=stage_id, task_id=self.request.id or "")


@shared_task(
    name="experiments.run_study_trial",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.EXPERIMENTS_TRIAL_SOFT_TIME_LIMIT,
    time_limit=settings.EXPERIMENTS_TRIAL_SOFT_TIME_LIMIT + 120,
)
def study_trial_task(self: object, study_id: int, slot: int) -> None:
    from apps.experiments.services import study_trial_execute

    study_trial_execute(study_id=study_id, slot=slot, task_id=self.request.id or "")


@shared_task(name="experiments.reap_stale", soft_time_limit=REAP_SOFT_TIME_LIMIT, time_limit=REAP_SOFT_TIME_LIMIT + 30)
def pipeline_runs_reap_stale_task() -> int:
    """Fail stages and trials whose worker died and whose retry never came (run by beat)."""
    from apps.experiments.services import pipeline_runs_reap_stale

    return pipeline_runs_reap_stale()
