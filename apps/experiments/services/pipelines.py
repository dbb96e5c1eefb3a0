"""Pipeline runs: start, run stage by stage on the worker, cancel, and recover from dead workers.

A pipeline run has seven stages (ingest, validate, features, train, evaluate, register, deploy). Each
stage is one Celery task; a stage that ends queues the next (`transaction.on_commit`), so the chain
lives in the database, not in a Celery canvas. Every task takes the stage's id only and claims the
stage with a conditional UPDATE before doing anything, so a second delivery of the same message never
runs a stage twice; a redelivered message whose first attempt died (no heartbeat for TAKEOVER_AFTER)
takes over once and counts the attempt on the row.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce, Concat, Greatest
from django.utils import timezone

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.queueing import BROKER_DOWN, enqueue_on_commit
from apps.core.services import audit_record, normalize_name
from apps.datasets.choices import DatasetVersionStatus
from apps.datasets.models import Dataset, DatasetVersion
from apps.experiments import pipeline_config
from apps.experiments.choices import (
    PipelineRunStatus,
    PipelineStageName,
    PipelineStageStatus,
    RunStatus,
    StudyStatus,
)
from apps.experiments.models import PipelineRun, PipelineStage, Run, Study
from apps.experiments.services.runtime import REAP_AFTER, TAKEOVER_AFTER, StageRuntime
from apps.experiments.services.tracking import code_version, experiment_get_or_create
from apps.experiments.stages import (
    PLUGGABLE_STAGES,
    WAITING,
    StageContext,
    StageFailed,
    StageSkipped,
    stage_handler,
    unavailable_reason,
)
from worker.datasets.schema import schema_columns
from worker.training.errors import ConfigError, TrainingCancelled

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
# A queued stage no worker claimed in this time had its message lost (a broker outage): it is sent again.
UNCLAIMED_RESEND_AFTER = timedelta(minutes=10)
CLAIM_POLL_SECONDS = 1.0
# A redelivered task waits this long for the attempt it duplicates to go silent before giving up
# (a live attempt keeps beating, so the duplicate leaves; a dead one goes stale after TAKEOVER_AFTER).
CLAIM_WAIT_SECONDS = TAKEOVER_AFTER.total_seconds() + 5 * CLAIM_POLL_SECONDS
# A train stage that waits for HPO trials has no task of its own; it is reaped only when no trial has
# reported for this long (trials may wait in the queue behind other work).
STUDY_IDLE_LIMIT = timedelta(minutes=30)
EXECUTOR_WORKER = "worker"
EXECUTOR_INLINE = "inline"


@dataclass
class Outcome:
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    waiting: bool = False


def _config_error(exc: ConfigError) -> ValidationError:
    return ValidationError({exc.field: exc.message})


# Creating


def _dataset_version(project: Project, data: dict[str, Any]) -> DatasetVersion:
    """The version a config names: `version`, else the latest ready one. Refuses versions that cannot train."""
    name = data["dataset"]
    dataset = Dataset.objects.filter(project=project, name_key=normalize_name(name)).first()
    if dataset is None:
        names = ", ".join(Dataset.objects.filter(project=project).values_list("name", flat=True)[:20]) or "none"
        raise ValidationError(
            {"data_config.dataset": f"No dataset named {name!r} in project {project.slug}; its datasets: {names}."}
        )
    if data["version"] is not None:
        version = dataset.versions.filter(number=data["version"]).first()
        if version is None:
            raise ValidationError({"data_config.version": f"{dataset.name} has no version {data['version']}."})
    else:
        version = dataset.versions.filter(status=DatasetVersionStatus.READY).order_by("-number").first()
        if version is None:
            latest = dataset.versions.order_by("-number").first()
            state = f"its latest, {latest.label}, is {latest.status}" if latest else "it has no versions"
            raise ValidationError({"data_config.dataset": f"{dataset.name} has no ready version yet: {state}."})
    if version.status != DatasetVersionStatus.READY:
        detail = f": {version.error}" if version.error else "; wait until its profiling has finished"
        raise ValidationError({"data_config.version": f"{version} is {version.status}{detail}."})
    if version.blocking_failed:
        failed = [c["message"] for c in version.validation.get("checks", []) if c.get("blocking")]
        reason = f" ({'; '.join(failed[:3])})" if failed else ""
        raise ValidationError(
            {
                "data_config.dataset": f"{version} failed blocking validation{reason}; models may not be trained "
                "on it. Fix the data or the dataset's rules and upload or validate again."
            }
        )
    return version


def _check_columns(version: DatasetVersion, train: dict[str, Any]) -> None:
    columns = schema_columns(version.schema)
    target = train["target"]
    if target not in columns:
        listed = ", ".join(list(columns)[:30])
        raise ValidationError(
            {"data_config.target": f"The target column {target!r} is not in {version}; its columns: {listed}."}
        )
    for name in (train.get("features") or {}).get("columns") or []:
        if name not in columns:
            raise ValidationError({"data_config.features.columns": f"{version} has no column {name!r}."})


def pipeline_config_from_request(
    *, config: Any = None, config_text: str = "", experiment_id: str | None = None, algorithm: str | None = None
) -> tuple[dict[str, Any], str]:
    """(normalised config, source text) from a dict or YAML/JSON text; a bad config is a ValidationError."""
    try:
        if config_text:
            raw = pipeline_config.parse_text(config_text)
        else:
            raw = config
        return pipeline_config.normalise(raw, experiment_id=experiment_id, algorithm=algorithm), config_text
    except ConfigError as exc:
        raise _config_error(exc) from None


def pipeline_run_create(
    *,
    project: Project,
    actor: AbstractBaseUser | None,
    config: Any = None,
    config_text: str = "",
    experiment_id: str | None = None,
    algorithm: str | None = None,
    stage: str | None = None,
    executor: str = EXECUTOR_WORKER,
) -> PipelineRun:
    """Check a pipeline config, record the run and its stages, and queue the first stage after commit.

    `config` is a dict, or `config_text` YAML/JSON; `experiment_id` and `algorithm` override the
    config (the CLI's `--experiment-id` and `--model-type`); `stage` limits the run (`--stage`).
    `actor` needs the editor role; `actor=None` is the system (a pipeline that no user starts).
    """
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    normalised, text = pipeline_config_from_request(
        config=config, config_text=config_text, experiment_id=experiment_id, algorithm=algorithm
    )
    try:
        requested = pipeline_config.stages_for(stage)
    except ConfigError as exc:
        raise _config_error(exc) from None
    if executor not in (EXECUTOR_WORKER, EXECUTOR_INLINE):
        raise ValidationError({"executor": f"Must be {EXECUTOR_WORKER} or {EXECUTOR_INLINE}."})
    version = _dataset_version(project, normalised["data"])
    _check_columns(version, normalised["train"])
    with transaction.atomic():
        experiment = experiment_get_or_create(
            project=project, name=normalised["experiment_id"], actor=actor, field="experiment_id"
        )
        train = normalised["train"]
        run = Run.objects.create(
            experiment=experiment,
            name=normalised["name"] or f"{train['algorithm']} on {version}",
            status=RunStatus.QUEUED,
            params={**train["params"], "algorithm": train["algorithm"], "seed": train["seed"]},
            tags={"source": "pipeline", **({"search": "optuna"} if normalised["search"] else {})},
            algorithm=train["algorithm"],
            dataset_version=version,
            code_version=code_version(),
            created_by=actor if getattr(actor, "is_authenticated", False) else None,
        )
        pipeline_run = PipelineRun.objects.create(
            project=project,
            experiment=experiment,
            config=normalised,
            config_text=text,
            dataset_version=version,
            executor=executor,
            run=run,
            candidate_run=None,
            created_by=run.created_by,
        )
        Run.objects.filter(pk=run.pk).update(
            pipeline_run=pipeline_run, tags={**run.tags, "pipeline_run": pipeline_run.pk}
        )
        stages = [
            PipelineStage(pipeline_run=pipeline_run, name=name, position=index, requested=name in requested)
            for index, name in enumerate(pipeline_config.STAGES)
        ]
        PipelineStage.objects.bulk_create(stages)
        audit_record(
            actor=actor,
            action="pipeline_run.created",
            obj=pipeline_run,
            project=project,
            after={
                "experiment": experiment.name,
                "dataset_version": str(version),
                "algorithm": train["algorithm"],
                "search": bool(normalised["search"]),
                "stages": list(requested),
            },
        )
        first = pipeline_run.stages.order_by("position").first()
        _queue_stage(pipeline_run, first)
    return pipeline_run


def _queue_stage(pipeline_run: PipelineRun, stage: PipelineStage) -> None:
    """Mark the stage queued under a fresh task id and send the task once the transaction commits.

    A queued stage's heartbeat_at is when its message was sent: a message lost to a broker outage is sent
    again by the reaper (`_stages_resend_unclaimed`).
    """
    task_id = f"{EXECUTOR_INLINE}-{uuid.uuid4()}" if pipeline_run.executor == EXECUTOR_INLINE else str(uuid.uuid4())
    PipelineStage.objects.filter(pk=stage.pk).update(
        status=PipelineStageStatus.QUEUED, task_id=task_id, heartbeat_at=timezone.now()
    )
    if pipeline_run.executor == EXECUTOR_WORKER:
        from apps.experiments.tasks import pipeline_stage_task

        enqueue_on_commit(pipeline_stage_task, stage.pk, task_id=task_id)


# Running a stage


def _stage_load(stage_id: int) -> PipelineStage:
    return PipelineStage.objects.select_related(
        "pipeline_run__project", "pipeline_run__experiment", "pipeline_run__run", "pipeline_run__dataset_version"
    ).get(pk=stage_id)


def _stage_claim(stage_id: int, task_id: str) -> PipelineStage | None:
    """Claim the stage for this task, or take over from a dead attempt of the same message; None: not ours."""
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        now = timezone.now()
        claimed = PipelineStage.objects.filter(pk=stage_id, status=PipelineStageStatus.QUEUED, task_id=task_id).update(
            status=PipelineStageStatus.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            ended_at=None,
            error="",
        )
        if claimed:
            return _stage_load(stage_id)
        stage = PipelineStage.objects.filter(pk=stage_id).first()
        if stage is None or stage.status != PipelineStageStatus.RUNNING or stage.task_id != task_id:
            logger.info("stage %s is not waiting for task %s; nothing to do", stage_id, task_id)
            return None
        # Our own message again: the worker running it died (reject_on_worker_lost) or the broker redelivered it.
        if stage.heartbeat_at and stage.heartbeat_at > now - TAKEOVER_AFTER:
            if time.monotonic() > deadline:
                logger.info("stage %s is alive on another worker; dropping this delivery", stage_id)
                return None
            time.sleep(CLAIM_POLL_SECONDS)
            continue
        if stage.attempts >= MAX_ATTEMPTS:
            _stage_lost(stage_id=stage_id, task_id=task_id, heartbeat_at=stage.heartbeat_at)
            return None
        note = (
            f"{timezone.now():%H:%M:%S} the worker running attempt {stage.attempts} stopped reporting "
            f"(last heartbeat {stage.heartbeat_at:%H:%M:%S}); "
            f"retrying, attempt {stage.attempts + 1} of {MAX_ATTEMPTS}\n"
        )
        taken = PipelineStage.objects.filter(
            pk=stage_id, status=PipelineStageStatus.RUNNING, task_id=task_id, heartbeat_at=stage.heartbeat_at
        ).update(attempts=F("attempts") + 1, heartbeat_at=now, started_at=now, log=Concat(F("log"), Value(note)))
        if taken:
            logger.warning("stage %s: taking over from a dead attempt", stage_id)
            return _stage_load(stage_id)


def _stage_lost(*, stage_id: int, task_id: str, heartbeat_at: Any) -> None:
    reason = (
        f"the worker running this stage stopped {MAX_ATTEMPTS} times (killed, out of memory or restarted); "
        f"last heartbeat at {heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    _stage_finish(stage_id=stage_id, task_id=task_id, outcome=Outcome(PipelineStageStatus.FAILED, error=reason))


def _pipeline_start(pipeline_run: PipelineRun) -> None:
    now = timezone.now()
    with transaction.atomic():
        started = PipelineRun.objects.filter(pk=pipeline_run.pk, status=PipelineRunStatus.QUEUED).update(
            status=PipelineRunStatus.RUNNING, started_at=now, heartbeat_at=now
        )
        if started:
            Run.objects.filter(pk=pipeline_run.run_id, status=RunStatus.QUEUED).update(
                status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, attempts=F("attempts") + 1
            )
            audit_record(
                actor=None,
                action="pipeline_run.started",
                obj=pipeline_run,
                project=pipeline_run.project,
                before={"status": PipelineRunStatus.QUEUED},
                after={"status": PipelineRunStatus.RUNNING},
            )


# The part of the pipeline config that each pluggable stage's handler gets as `context.config`.
PLUGGABLE_STAGE_CONFIG = {PipelineStageName.REGISTER: "registry_config", PipelineStageName.DEPLOY: "deployment_config"}


def _stage_context(stage: PipelineStage, runtime: StageRuntime) -> StageContext:
    pipeline_run = stage.pipeline_run
    config_key = PLUGGABLE_STAGE_CONFIG.get(stage.name)
    return StageContext(
        stage=stage,
        runtime=runtime,
        config=(pipeline_run.config.get(config_key) or {}) if config_key else {},
        outputs=dict(pipeline_run.stages.filter(position__lt=stage.position).values_list("name", "outputs")),
        actor=pipeline_run.created_by,
    )


def _run_body(stage: PipelineStage, runtime: StageRuntime) -> Outcome:
    try:
        runtime.check_cancelled()
        handler = stage_handler(stage.name)
        if handler is None:
            raise StageSkipped(unavailable_reason(stage.name))
        result = handler(_stage_context(stage, runtime))
        if result is WAITING:
            return Outcome(PipelineStageStatus.RUNNING, waiting=True)
        return Outcome(PipelineStageStatus.SUCCEEDED, outputs=dict(result or {}))
    except TrainingCancelled:
        runtime.log("cancelled")
        return Outcome(PipelineStageStatus.CANCELLED, error="cancelled by request")
    except StageSkipped as exc:
        runtime.log(f"skipped: {exc}")
        return Outcome(PipelineStageStatus.SKIPPED, error=str(exc))
    except SoftTimeLimitExceeded:
        if runtime.should_stop():
            return Outcome(PipelineStageStatus.CANCELLED, error="cancelled by request")
        limit = settings.EXPERIMENTS_STAGE_SOFT_TIME_LIMIT
        message = f"the {stage.name} stage exceeded its time limit of {limit} s and was stopped"
        runtime.log(message)
        return Outcome(PipelineStageStatus.FAILED, error=message)
    except ConfigError as exc:
        message = f"{exc.field}: {exc.message}"
    except ValidationError as exc:
        message = "; ".join(
            f"{key}: {' '.join(values)}" for key, values in getattr(exc, "message_dict", {"": exc.messages}).items()
        ).removeprefix(": ")
    except StageFailed as exc:
        message = str(exc)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        runtime.log("".join(traceback.format_exception(exc)).rstrip())
    runtime.log(f"failed: {message}")
    return Outcome(PipelineStageStatus.FAILED, error=message)


def pipeline_stage_execute(*, stage_id: int, task_id: str) -> None:
    """Run one stage on this worker (the body of the stage task); safe to call twice for the same task."""
    stage = _stage_claim(stage_id, task_id)
    if stage is None:
        return
    pipeline_run = stage.pipeline_run
    _pipeline_start(pipeline_run)
    runtime = StageRuntime(
        pipeline_run_id=pipeline_run.pk,
        stage_id=stage.pk,
        run_ids=[pipeline_run.run_id],
        metric_run_id=pipeline_run.run_id,
        log_prefix=f"[{stage.name}] ",
    )
    runtime.start()
    try:
        runtime.log(f"started on {_worker_name()} (attempt {stage.attempts})")
        outcome = _run_body(stage, runtime)
    finally:
        runtime.stop()
    _stage_finish(stage_id=stage.pk, task_id=task_id, outcome=outcome, meter=runtime.meter)


def _worker_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()} pid {os.getpid()}"


def _stage_finish(*, stage_id: int, task_id: str, outcome: Outcome, meter: Any = None) -> None:
    with transaction.atomic():
        stage = PipelineStage.objects.select_for_update().get(pk=stage_id)
        if meter is not None:
            stage_resources_add(stage_id=stage_id, cpu_seconds=meter.cpu_seconds, peak_rss_bytes=meter.peak_rss_bytes)
            stage.refresh_from_db()
        if outcome.waiting:
            # The stage goes on in other tasks (HPO trials); the last of them ends it.
            if outcome.outputs:
                PipelineStage.objects.filter(pk=stage_id).update(outputs={**stage.outputs, **outcome.outputs})
            return
        if stage.status != PipelineStageStatus.RUNNING or stage.task_id != task_id:
            logger.warning("stage %s was finished or taken over elsewhere; dropping this result", stage_id)
            return
        pipeline_run = PipelineRun.objects.select_for_update().select_related("project").get(pk=stage.pipeline_run_id)
        stage.outputs = {**stage.outputs, **outcome.outputs}
        _stage_end(stage, pipeline_run, outcome.status, outcome.error)


def stage_resources_add(*, stage_id: int, cpu_seconds: float, peak_rss_bytes: int) -> None:
    """Add CPU time and raise the peak RSS of a stage (trials of one stage may run on several workers)."""
    PipelineStage.objects.filter(pk=stage_id).update(
        cpu_seconds=Coalesce(F("cpu_seconds"), Value(0.0)) + cpu_seconds,
        peak_rss_bytes=Greatest(Coalesce(F("peak_rss_bytes"), Value(0)), Value(int(peak_rss_bytes))),
    )


def _stage_end(stage: PipelineStage, pipeline_run: PipelineRun, status: str, error: str) -> None:
    """Record a stage's end (the stage and pipeline rows are locked by the caller) and move the pipeline on."""
    now = timezone.now()
    before = stage.status
    stage.status = status
    stage.error = error[:10000]
    stage.ended_at = now
    if stage.started_at:
        stage.duration_seconds = (now - stage.started_at).total_seconds()
    stage.save()
    audit_record(
        actor=None,
        action=f"pipeline_stage.{status}",
        obj=pipeline_run,
        project=pipeline_run.project,
        before={"stage": stage.name, "status": before},
        after={"stage": stage.name, "status": status},
        message=error[:500],
    )
    _pipeline_advance(pipeline_run, stage)


def _mark_rest(pipeline_run: PipelineRun, after: int, status: str, reason: str) -> None:
    pipeline_run.stages.filter(
        position__gt=after, status__in=[PipelineStageStatus.PENDING, PipelineStageStatus.QUEUED]
    ).update(status=status, error=reason, ended_at=timezone.now())


def _pipeline_advance(pipeline_run: PipelineRun, stage: PipelineStage) -> None:
    if stage.status == PipelineStageStatus.FAILED:
        _mark_rest(pipeline_run, stage.position, PipelineStageStatus.SKIPPED, f"not run: the {stage.name} stage failed")
        _pipeline_end(pipeline_run, PipelineRunStatus.FAILED, f"{stage.name}: {stage.error}")
        return
    if stage.status == PipelineStageStatus.CANCELLED or pipeline_run.status == PipelineRunStatus.CANCELLING:
        _mark_rest(pipeline_run, stage.position, PipelineStageStatus.CANCELLED, "cancelled by request")
        _pipeline_end(pipeline_run, PipelineRunStatus.CANCELLED, "cancelled by request")
        return
    statuses = dict(pipeline_run.stages.values_list("name", "status"))
    for following in pipeline_run.stages.filter(position__gt=stage.position).order_by("position"):
        reason = _skip_reason(pipeline_run, following, statuses)
        if reason:
            PipelineStage.objects.filter(pk=following.pk).update(
                status=PipelineStageStatus.SKIPPED, error=reason, ended_at=timezone.now()
            )
            statuses[following.name] = PipelineStageStatus.SKIPPED
            continue
        _queue_stage(pipeline_run, following)
        return
    _pipeline_end(pipeline_run, PipelineRunStatus.SUCCEEDED, "")


def _skip_reason(pipeline_run: PipelineRun, stage: PipelineStage, statuses: dict[str, str]) -> str:
    if not stage.requested:
        return "not requested: this run was limited to earlier stages"
    if stage.name in PLUGGABLE_STAGES and stage_handler(stage.name) is None:
        return unavailable_reason(stage.name)
    if stage.name == PipelineStageName.DEPLOY:
        if statuses.get(PipelineStageName.REGISTER) != PipelineStageStatus.SUCCEEDED:
            return "not run: the register stage did not register a model version"
        run = pipeline_run.run
        if run is not None and run.passes_thresholds is False:
            return "not run: the model did not pass its thresholds (" + "; ".join(run.threshold_failures) + ")"
    return ""


def _pipeline_end(pipeline_run: PipelineRun, status: str, error: str) -> None:
    now = timezone.now()
    before = pipeline_run.status
    pipeline_run.status = status
    pipeline_run.error = error[:10000]
    pipeline_run.ended_at = now
    pipeline_run.save(update_fields=["status", "error", "ended_at"])
    run_status = {
        PipelineRunStatus.SUCCEEDED: RunStatus.SUCCEEDED,
        PipelineRunStatus.FAILED: RunStatus.FAILED,
        PipelineRunStatus.CANCELLED: RunStatus.CANCELLED,
    }[status]
    Run.objects.filter(pk=pipeline_run.run_id).exclude(status__in=RunStatus.finished()).update(
        status=run_status, error=error[:10000], ended_at=now
    )
    Study.objects.filter(pipeline_run=pipeline_run, status=StudyStatus.RUNNING).update(
        status=StudyStatus.CANCELLED if status == PipelineRunStatus.CANCELLED else StudyStatus.FAILED,
        ended_at=now,
        error=error[:10000],
    )
    audit_record(
        actor=None,
        action=f"pipeline_run.{status}",
        obj=pipeline_run,
        project=pipeline_run.project,
        before={"status": before},
        after={"status": status},
        message=error[:500],
    )


def pipeline_stage_complete(*, stage_id: int, status: str, outputs: dict[str, Any], error: str = "") -> None:
    """End a stage that waited for other tasks (the HPO train stage, ended by its last trial)."""
    with transaction.atomic():
        stage = PipelineStage.objects.select_for_update().get(pk=stage_id)
        if stage.status != PipelineStageStatus.RUNNING:
            return
        pipeline_run = PipelineRun.objects.select_for_update().select_related("project").get(pk=stage.pipeline_run_id)
        stage.outputs = {**stage.outputs, **outputs}
        _stage_end(stage, pipeline_run, status, error)


def pipeline_run_execute_inline(*, pipeline_run: PipelineRun) -> PipelineRun:
    """Run the queued stages of an inline pipeline run in this process, one after another."""
    while True:
        stage = pipeline_run.stages.filter(status=PipelineStageStatus.QUEUED).order_by("position").first()
        if stage is None:
            break
        pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    pipeline_run.refresh_from_db()
    return pipeline_run


# Cancelling and recovering


@transaction.atomic
def pipeline_run_cancel(*, pipeline_run: PipelineRun, actor: AbstractBaseUser) -> PipelineRun:
    """Stop a pipeline run: a queued one ends at once; a running one is set cancelling and its task revoked.

    The running stage stops cooperatively (its training loop checks the row) or is terminated by the
    revoke; either way the run ends `cancelled`.
    """
    require_project_role(actor, pipeline_run.project, ProjectRole.EDITOR)
    locked = PipelineRun.objects.select_for_update().select_related("project").get(pk=pipeline_run.pk)
    if locked.is_finished:
        raise ValidationError({"status": f"{locked} already {locked.status}; there is nothing to cancel."})
    if locked.status == PipelineRunStatus.CANCELLING:
        return locked
    before = locked.status
    task_ids = list(
        locked.stages.filter(status__in=[PipelineStageStatus.QUEUED, PipelineStageStatus.RUNNING])
        .exclude(task_id="")
        .values_list("task_id", flat=True)
    )
    task_ids += list(
        Run.objects.filter(study__pipeline_run=locked, status=RunStatus.RUNNING)
        .exclude(task_id="")
        .values_list("task_id", flat=True)
    )
    running = locked.stages.filter(status=PipelineStageStatus.RUNNING).exists()
    audit_record(
        actor=actor,
        action="pipeline_run.cancel_requested",
        obj=locked,
        project=locked.project,
        before={"status": before},
        after={"status": PipelineRunStatus.CANCELLING if running else PipelineRunStatus.CANCELLED},
    )
    if running:
        locked.status = PipelineRunStatus.CANCELLING
        locked.save(update_fields=["status"])
    else:
        _mark_rest(locked, -1, PipelineStageStatus.CANCELLED, "cancelled by request")
        _pipeline_end(locked, PipelineRunStatus.CANCELLED, "cancelled by request")
    if locked.executor == EXECUTOR_WORKER and task_ids:
        transaction.on_commit(lambda: _revoke(task_ids))
    return locked


def _revoke(task_ids: list[str]) -> None:
    from mlops_console.celery import app

    try:
        for task_id in task_ids:
            app.control.revoke(task_id, terminate=True)
    except BROKER_DOWN:
        # The revoke only hurries the cancel: the stage reads the run's status at its next cancel check.
        logger.warning(
            "could not revoke tasks %s: the broker is unreachable; they stop at their cancel check", task_ids
        )


def pipeline_stage_revoked(*, stage_id: int, task_id: str) -> None:
    """The worker terminated a stage task on a revoke: record the cancellation the task could not."""
    outcome = Outcome(PipelineStageStatus.CANCELLED, error="cancelled by request (the task was terminated)")
    _stage_finish(stage_id=stage_id, task_id=task_id, outcome=outcome)


def _stage_requeue(stage: PipelineStage, *, silent: float) -> bool:
    """Send a dead worker's stage again under a fresh task id, once (attempt 2 of MAX_ATTEMPTS).

    A whole worker killed mid-stage leaves its message unacknowledged until the broker's visibility timeout
    (an hour), so no redelivery would take over in time. The original message, should it come back, finds
    another task id on the stage and leaves. False when the stage is not the reaper's to re-queue.
    """
    if stage.pipeline_run.executor != EXECUTOR_WORKER or stage.attempts >= MAX_ATTEMPTS:
        return False
    note = (
        f"{timezone.now():%H:%M:%S} the worker running attempt {stage.attempts} stopped reporting {silent:.0f} s "
        f"ago; re-queued, attempt {stage.attempts + 1} of {MAX_ATTEMPTS}\n"
    )
    with transaction.atomic():
        # The update locks the row until commit: a late heartbeat or a takeover in between wins instead.
        still_dead = PipelineStage.objects.filter(
            pk=stage.pk, status=PipelineStageStatus.RUNNING, task_id=stage.task_id, heartbeat_at=stage.heartbeat_at
        ).update(log=Concat(F("log"), Value(note)))
        if not still_dead:
            return False
        _queue_stage(stage.pipeline_run, stage)
    logger.warning("stage %s: its worker stopped reporting %.0f s ago; re-queued", stage.pk, silent)
    return True


def _stages_resend_unclaimed(now: datetime) -> None:
    """Send again, under the same task id, the message of stages queued UNCLAIMED_RESEND_AFTER ago and still not
    claimed: the send failed (the broker was down) or the message was lost. Should both arrive, the claim on the
    task id lets one run; the other finds the stage taken and leaves."""
    from apps.experiments.tasks import pipeline_stage_task

    waiting = PipelineStage.objects.filter(
        Q(heartbeat_at__lt=now - UNCLAIMED_RESEND_AFTER) | Q(heartbeat_at__isnull=True),
        status=PipelineStageStatus.QUEUED,
        pipeline_run__executor=EXECUTOR_WORKER,
    )
    for stage in waiting:
        resent = PipelineStage.objects.filter(
            pk=stage.pk, status=PipelineStageStatus.QUEUED, task_id=stage.task_id, heartbeat_at=stage.heartbeat_at
        ).update(heartbeat_at=now)
        if resent:
            pipeline_stage_task.apply_async(args=[stage.pk], task_id=stage.task_id)
            logger.warning(
                "stage %s: queued %s ago and not claimed; its message was sent again", stage.pk, UNCLAIMED_RESEND_AFTER
            )


def pipeline_stages_reap_stale(*, now: datetime) -> int:
    """Send again the messages of stages queued long ago and never claimed; re-queue once, else fail, stages
    whose heartbeat stopped (their worker died without a retry taking over). Returns how many it ended."""
    _stages_resend_unclaimed(now)
    ended = 0
    stale = PipelineStage.objects.filter(status=PipelineStageStatus.RUNNING).filter(
        Q(heartbeat_at__lt=now - REAP_AFTER) | Q(heartbeat_at__isnull=True, started_at__lt=now - REAP_AFTER)
    )
    for stage in stale.select_related("pipeline_run"):
        waiting_on_study = Study.objects.filter(pipeline_run=stage.pipeline_run, status=StudyStatus.RUNNING).exists()
        if waiting_on_study and stage.heartbeat_at and stage.heartbeat_at > now - STUDY_IDLE_LIMIT:
            continue
        cancelling = stage.pipeline_run.status == PipelineRunStatus.CANCELLING
        silent = (now - (stage.heartbeat_at or stage.started_at)).total_seconds()
        if not cancelling and not waiting_on_study and _stage_requeue(stage, silent=silent):
            continue
        outcome = (
            Outcome(PipelineStageStatus.CANCELLED, error="cancelled by request (the worker stopped)")
            if cancelling
            else Outcome(
                PipelineStageStatus.FAILED,
                error=f"the worker running this stage stopped reporting {silent:.0f} s ago "
                "(killed, out of memory or restarted) and no retry took over",
            )
        )
        _stage_finish(stage_id=stage.pk, task_id=stage.task_id, outcome=outcome)
        ended += 1
    return ended
