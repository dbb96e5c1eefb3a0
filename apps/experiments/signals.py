"""Worker-side signal handlers."""

from __future__ import annotations

from typing import Any

from celery.signals import task_revoked

STAGE_TASK_NAME = "experiments.run_pipeline_stage"


@task_revoked.connect
def _stage_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **kwargs: Any) -> None:
    """A stage task killed by `revoke(terminate=True)` cannot record its end itself; the worker does it here."""
    if request is None or getattr(request, "name", None) != STAGE_TASK_NAME or not terminated:
        return
    from apps.experiments.services import pipeline_stage_revoked

    args = list(getattr(request, "args", None) or [])
    if args:
        pipeline_stage_revoked(stage_id=int(args[0]), task_id=str(getattr(request, "id", "")))
