"""Use cases of `core.Job`: long work done by the Celery worker, whose row the UI reads.

The states run one way: queued -> running -> succeeded | failed. A requester records the job with
`job_start`; the worker takes it with `job_claim`, reports with `job_progress` and ends it with
`job_finish`. Every transition is a conditional UPDATE on the state it expects, so two workers can never
both run a job or both finish it. The claim counts an attempt, and that count is the worker's fence: once a
stale job has been taken over, the old worker's progress and finish are refused.
"""

from __future__ import annotations

import math
import time
import traceback
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from apps.core.choices import JobStatus
from apps.core.models import Job, Project

# The tail of a traceback is where the error is; the head is framework frames.
TRACEBACK_MAX_CHARS = 10_000


def job_start(*, kind: str, project: Project, actor: AbstractBaseUser | None, obj: Any = None) -> Job:
    """Record a queued job of `kind` on `obj` (a model instance, or None); the worker claims it later."""
    return Job.objects.create(
        project=project,
        kind=kind,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )


def job_claim(*, job: Job, stale_after: timedelta | None = None, now: datetime | None = None) -> Job | None:
    """Take a queued job for this worker and return it running; None if it is not this worker's to run.

    A job running for longer than `stale_after` belongs to a worker that died and is taken over. `now` is
    the claim time, for a caller that claims its own row at the same moment and must keep both in step.
    A second delivery of the same task finds the job running or finished and gets None: nothing to do.
    """
    now = now or timezone.now()
    claimable = Q(status=JobStatus.QUEUED)
    if stale_after is not None:
        claimable |= Q(status=JobStatus.RUNNING, started_at__lt=now - stale_after)
    claimed = Job.objects.filter(claimable, pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=now, finished_at=None, attempts=F("attempts") + 1, error=""
    )
    if not claimed:
        return None
    return Job.objects.get(pk=job.pk)


def _refused(job: Job, action: str) -> ValidationError:
    current = Job.objects.filter(pk=job.pk).values_list("status", "attempts").first()
    if current is None:
        return ValidationError({"job": f"Job #{job.pk} no longer exists; cannot {action} it."})
    status, attempts = current
    if status == JobStatus.RUNNING:
        return ValidationError(
            {"status": f"Job #{job.pk} was taken over by another worker (attempt {attempts}); cannot {action} it."}
        )
    return ValidationError({"status": f"Job #{job.pk} is {status}, not running; cannot {action} it."})


def _running(job: Job) -> Any:
    """The job's row if this worker still holds it: running, on the attempt this worker claimed."""
    return Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts)


def job_progress(*, job: Job, fraction: float | None, message: str) -> None:
    """Set how far a running job is (0..1; None keeps it) and append `message` to its log.

    The log grows by concatenation in the database, so a report never rewrites what is already there.
    """
    if fraction is not None and not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        raise ValidationError({"fraction": f"Progress must be between 0 and 1, not {fraction!r}."})
    changes: dict[str, Any] = {"log": Concat(F("log"), Value(f"{message}\n"))}
    if fraction is not None:
        changes["progress"] = fraction
    if not _running(job).update(**changes):
        raise _refused(job, "report progress on")


@transaction.atomic
def job_finish(*, job: Job, error: BaseException | None = None) -> Job:
    """End a running job: succeeded, or failed with `error`'s message in the log and its traceback kept."""
    now = timezone.now()
    if error is None:
        changes: dict[str, Any] = {"status": JobStatus.SUCCEEDED, "progress": 1.0, "finished_at": now}
    else:
        changes = {
            "status": JobStatus.FAILED,
            "error": "".join(traceback.format_exception(error))[-TRACEBACK_MAX_CHARS:],
            "log": Concat(F("log"), Value(f"failed: {type(error).__name__}: {error}\n")),
            "finished_at": now,
        }
    if not _running(job).update(**changes):
        raise _refused(job, "finish")
    return Job.objects.get(pk=job.pk)


class JobProgress:
    """A progress callback for a worker engine: `(fraction, message)`, written at most once per interval.

    Engines report often (one line per column of a wide table); batching the lines keeps that to a few
    writes. Call `flush` before finishing the job, so the last lines are not lost. Without a job (its row
    was deleted by hand) the reports go nowhere and the work still runs.
    """

    def __init__(self, job: Job | None, *, interval_seconds: float = 0.5) -> None:
        self.job = job
        self.interval_seconds = interval_seconds
        self.lines: list[str] = []
        self.fraction: float | None = None
        self.last_write = -math.inf  # the first report is written at once

    def __call__(self, fraction: float, message: str) -> None:
        self.fraction = fraction
        self.lines.append(message)
        if time.monotonic() - self.last_write >= self.interval_seconds:
            self.flush()

    def flush(self) -> None:
        if self.job is None or not self.lines:
            return
        job_progress(job=self.job, fraction=self.fraction, message="\n".join(self.lines))
        self.lines = []
        self.last_write = time.monotonic()
