"""Worker-side signal handlers."""

from __future__ import annotations

from typing import Any

from celery.signals import task_revoked

STAGE_TASK_NAME = "experiments.run_pipeline_stage"
TRIAL_TASK_NAME = "experiments.run_study_trial"


@task_revoked.connect
def _stage_or_trial_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **kwargs: Any) -> None:
    """A task killed by `revoke(terminate=True)` cannot record its end itself; the worker does it here."""
    if request is None or not terminated:
        return
    name = getattr(request, "name", None) or getattr(request, "task_name", None)
    args = list(getattr(request, "args", None) or [])
    task_id = str(getattr(request, "id", ""))
    if name == STAGE_TASK_NAME and args:
        from apps.experiments.services import pipeline_stage_revoked

        pipeline_stage_revoked(stage_id=int(args[0]), task_id=task_id)
    elif name == TRIAL_TASK_NAME and len(args) >= 2:
        from apps.experiments.services import study_trial_revoked

        study_trial_revoked(study_id=int(args[0]), slot=int(args[1]), task_id=task_id)
