"""Hyperparameter search: a Study row, its Optuna study in our database, and one Celery task per trial.

The train stage of a pipeline with `search` creates the study and queues `n_trials` trial tasks; any
number of workers run them in parallel, each loading the study by name, asking Optuna for a trial,
training it as a child run of the pipeline's run and telling Optuna the result. The task that
finishes the last trial slot picks the best trial (its bundle becomes the pipeline's candidate) and
moves the pipeline on. Each slot has at most one run (a unique constraint), so a redelivered trial
task takes over its own slot instead of adding a trial.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

import optuna
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from apps.core.queueing import enqueue_on_commit
from apps.core.services import audit_record
from apps.experiments import hpo
from apps.experiments.choices import (
    PipelineRunStatus,
    PipelineStageName,
    PipelineStageStatus,
    RunArtifactKind,
    RunStatus,
    StudyStatus,
)
from apps.experiments.models import PipelineRun, PipelineStage, Run, Study
from apps.experiments.services.builtin_stages import load_frames, train_config_for, train_into_run, train_model
from apps.experiments.services.pipelines import (
    CLAIM_POLL_SECONDS,
    CLAIM_WAIT_SECONDS,
    EXECUTOR_INLINE,
    MAX_ATTEMPTS,
    pipeline_stage_complete,
    stage_resources_add,
)
from apps.experiments.services.runtime import REAP_AFTER, TAKEOVER_AFTER, StageRuntime
from apps.experiments.services.tracking import code_version, run_artifact_link
from apps.experiments.stages import WAITING, StageContext, StageFailed, Waiting
from worker.training.errors import ConfigError, TrainingCancelled

logger = logging.getLogger(__name__)

TRIAL_STATE_TAG = "trial_state"


def _train_stage(pipeline_run: PipelineRun) -> PipelineStage:
    return pipeline_run.stages.get(name=PipelineStageName.TRAIN)


def train_stage(context: StageContext) -> dict[str, Any] | Waiting:
    """The train stage: the HPO study when the pipeline has a `search` (the stage waits for its trials), else
    one model trained on the training rows."""
    if not context.pipeline_run.config.get("search"):
        return train_model(context)
    study = study_start(stage=context.stage, runtime=context.runtime)
    return WAITING if study is not None else {}


def study_start(*, stage: PipelineStage, runtime: StageRuntime) -> Study | None:
    """Create the study for a pipeline's train stage and queue its trials (inline: run them here)."""
    pipeline_run = stage.pipeline_run
    search = pipeline_run.config["search"]
    validated = pipeline_run.stages.get(name=PipelineStageName.VALIDATE).outputs
    metric, direction = validated["search_metric"], validated["search_direction"]
    name = f"{pipeline_run.project.slug}.pipeline-{pipeline_run.pk}.{uuid.uuid4().hex[:8]}"
    optuna.create_study(
        study_name=name,
        storage=hpo.storage(),
        direction=direction,
        sampler=hpo.make_sampler(search["sampler"], pipeline_run.config["train"]["seed"]),
        pruner=hpo.make_pruner(search["pruner"]),
    )
    with transaction.atomic():
        study = Study.objects.create(
            project=pipeline_run.project,
            experiment=pipeline_run.experiment,
            pipeline_run=pipeline_run,
            parent_run=pipeline_run.run,
            storage_name=name,
            metric=metric,
            direction=direction,
            sampler=search["sampler"],
            pruner=search["pruner"],
            n_trials=search["n_trials"],
            timeout_seconds=search["timeout"],
            search=search,
            started_at=timezone.now(),
        )
        audit_record(
            actor=None,
            action="study.created",
            obj=study,
            project=pipeline_run.project,
            after={"metric": metric, "direction": direction, "n_trials": study.n_trials, "sampler": study.sampler},
        )
        runtime.log(
            f"study {name}: {study.n_trials} trials of {', '.join(search['algorithms'])}, "
            f"{direction} {metric}, {study.sampler} sampler, {study.pruner} pruner"
            + (f", time budget {study.timeout_seconds} s" if study.timeout_seconds else "")
        )
        if pipeline_run.executor != EXECUTOR_INLINE:
            from apps.experiments.tasks import study_trial_task

            for slot in range(study.n_trials):
                enqueue_on_commit(study_trial_task, study.pk, slot)
    if pipeline_run.executor == EXECUTOR_INLINE:
        for slot in range(study.n_trials):
            study_trial_execute(study_id=study.pk, slot=slot, task_id=f"{EXECUTOR_INLINE}-{uuid.uuid4()}")
    return study


def _claim_slot(study: Study, slot: int, task_id: str) -> Run | None:
    """The slot's run, newly created or taken over from a dead attempt of this task; None: nothing to do."""
    pipeline_run = study.pipeline_run
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        now = timezone.now()
        with transaction.atomic():
            run, created = Run.objects.get_or_create(
                study=study,
                trial_slot=slot,
                defaults={
                    "experiment": study.experiment,
                    "name": f"trial {slot}",
                    "status": RunStatus.RUNNING,
                    "parent": study.parent_run,
                    "pipeline_run": pipeline_run,
                    "dataset_version": pipeline_run.dataset_version,
                    "dataset_split": study.parent_run.dataset_split,
                    "code_version": code_version(),
                    "created_by": pipeline_run.created_by,
                    "tags": {"source": "hpo", "study": study.storage_name},
                    "task_id": task_id,
                    "attempts": 1,
                    "started_at": now,
                    "heartbeat_at": now,
                },
            )
        if created:
            return run
        if run.is_finished or run.task_id != task_id:
            return None
        if run.heartbeat_at and run.heartbeat_at > now - TAKEOVER_AFTER:
            if time.monotonic() > deadline:
                return None
            time.sleep(CLAIM_POLL_SECONDS)
            continue
        _tell_failed(study, run.trial_number)
        if run.attempts >= MAX_ATTEMPTS:
            study_trial_lost(run=run)
            return None
        note = f"{now:%H:%M:%S} the worker running attempt {run.attempts} stopped reporting; retrying this trial\n"
        taken = Run.objects.filter(
            pk=run.pk, status=RunStatus.RUNNING, task_id=task_id, heartbeat_at=run.heartbeat_at
        ).update(
            attempts=F("attempts") + 1,
            heartbeat_at=now,
            started_at=now,
            trial_number=None,
            log=Concat(F("log"), Value(note)),
        )
        if taken:
            run.refresh_from_db()
            return run


def _tell_failed(study: Study, trial_number: int | None) -> None:
    """Close an Optuna trial a dead worker left running, so samplers and counts do not wait for it."""
    if trial_number is None:
        return
    loaded = optuna.load_study(study_name=study.storage_name, storage=hpo.storage())
    trial = next((t for t in loaded.get_trials(deepcopy=False) if t.number == trial_number), None)
    if trial is not None and trial.state == optuna.trial.TrialState.RUNNING:
        loaded.tell(trial_number, state=optuna.trial.TrialState.FAIL)


def _budget_used(study: Study) -> bool:
    if not study.timeout_seconds or study.started_at is None:
        return False
    return (timezone.now() - study.started_at).total_seconds() >= study.timeout_seconds


def study_trial_execute(*, study_id: int, slot: int, task_id: str) -> None:
    """Run trial slot `slot` of a study (the body of the trial task); safe to run twice."""

    study = Study.objects.select_related("pipeline_run__project", "pipeline_run__run", "parent_run").get(pk=study_id)
    pipeline_run = study.pipeline_run
    stage = _train_stage(pipeline_run)
    if study.status != StudyStatus.RUNNING:
        return
    if pipeline_run.status in (PipelineRunStatus.CANCELLING, PipelineRunStatus.CANCELLED):
        _slot_done(study_id=study_id, slot=slot, note=f"trial slot {slot} not run: the pipeline run was cancelled")
        return
    if _budget_used(study):
        note = f"trial slot {slot} not run: the time budget of {study.timeout_seconds} s is used up"
        _slot_done(study_id=study_id, slot=slot, note=note)
        return
    run = _claim_slot(study, slot, task_id)
    if run is None:
        if Run.objects.filter(study=study, trial_slot=slot, status__in=RunStatus.finished()).exists():
            _slot_done(study_id=study_id, slot=slot, note="")
        return
    runtime = StageRuntime(
        pipeline_run_id=pipeline_run.pk, stage_id=stage.pk, run_ids=[run.pk], metric_run_id=run.pk, stage_log=False
    )
    runtime.start()
    state, error, value, trial = RunStatus.FAILED, "", None, None
    loaded = optuna.load_study(
        study_name=study.storage_name,
        storage=hpo.storage(),
        sampler=hpo.make_sampler(study.sampler, pipeline_run.config["train"]["seed"] + slot + 1),
        pruner=hpo.make_pruner(study.pruner),
    )
    try:
        runtime.check_cancelled()
        train_df, test_df = load_frames(pipeline_run)
        trial = loaded.ask()
        trial.set_user_attr("run_id", run.pk)
        Run.objects.filter(pk=run.pk).update(trial_number=trial.number, name=f"trial {trial.number}")
        task = stage.pipeline_run.stages.get(name=PipelineStageName.VALIDATE).outputs["task"]
        algorithm, sampled = hpo.sample_params(trial, study.search, task)
        base = pipeline_run.config["train"]
        params = {**base["params"], **sampled} if algorithm == base["algorithm"] else sampled
        # Recorded now, so a pruned or failed trial still shows what it tried.
        Run.objects.filter(pk=run.pk).update(params={**params, "algorithm": algorithm}, algorithm=algorithm)
        runtime.log(f"trial {trial.number}: {algorithm} {params}")
        config = train_config_for(pipeline_run, algorithm=algorithm, params=params)
        result = train_into_run(
            run=run,
            config=config,
            train_df=train_df,
            test_df=test_df,
            runtime=runtime,
            trial=hpo.PruningTrial(trial, study.direction),
        )
        value = result.metrics.get(study.metric)
        if value is None:
            raise StageFailed(f"{study.metric} was not computed for this model")
        loaded.tell(trial, value)
        state = RunStatus.SUCCEEDED
        runtime.log(f"trial {trial.number}: {study.metric} = {value:.6g}")
    except optuna.TrialPruned as exc:
        loaded.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state, error = RunStatus.CANCELLED, f"pruned by the {study.pruner} pruner: {exc}"
        runtime.log(error)
    except TrainingCancelled:
        state, error = RunStatus.CANCELLED, "cancelled by request"
    except SoftTimeLimitExceeded:
        error = f"the trial exceeded its time limit of {settings.EXPERIMENTS_TRIAL_SOFT_TIME_LIMIT} s"
    except (ConfigError, ValidationError, StageFailed) as exc:
        error = f"{exc.field}: {exc.message}" if isinstance(exc, ConfigError) else "; ".join(_messages(exc))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.exception("trial slot %s of study %s failed", slot, study.storage_name)
    finally:
        if error:
            runtime.log(error)
        runtime.stop()
    if trial is not None and state != RunStatus.SUCCEEDED and not error.startswith("pruned"):
        loaded.tell(trial, state=optuna.trial.TrialState.FAIL)
    stage_resources_add(
        stage_id=stage.pk, cpu_seconds=runtime.meter.cpu_seconds, peak_rss_bytes=runtime.meter.peak_rss_bytes
    )
    trial_state = "pruned" if error.startswith("pruned") else state
    ended = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, task_id=task_id).update(
        status=state, error=error[:10000], ended_at=timezone.now()
    )
    if ended:
        tags = Run.objects.get(pk=run.pk).tags
        Run.objects.filter(pk=run.pk).update(tags={**tags, TRIAL_STATE_TAG: trial_state})
        summary = f"trial slot {slot}: {trial_state}" + (f", {study.metric} = {value:.6g}" if value is not None else "")
        _slot_done(study_id=study_id, slot=slot, note=summary + (f" ({error})" if error else ""))


def _messages(exc: Exception) -> list[str]:
    return list(getattr(exc, "messages", None) or [str(exc)])


def _slot_done(*, study_id: int, slot: int, note: str) -> None:
    """Count a trial slot as finished; the call that finishes the last one ends the study."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if slot not in study.finished_slots:
            study.finished_slots = [*study.finished_slots, slot]
            study.save(update_fields=["finished_slots"])
            if note:
                stage = _train_stage(study.pipeline_run)
                line = f"{timezone.now():%H:%M:%S} [train] {note}\n"
                PipelineStage.objects.filter(pk=stage.pk).update(log=Concat(F("log"), Value(line)))
                Run.objects.filter(pk=study.parent_run_id).update(log=Concat(F("log"), Value(line)))
        complete = study.status == StudyStatus.RUNNING and len(study.finished_slots) >= study.n_trials
    if complete:
        study_finalize(study_id=study_id)


def _trial_counts(loaded: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in loaded.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def study_finalize(*, study_id: int) -> None:
    """Pick the best trial, make its model the pipeline's candidate, and end the train stage."""
    loaded_name = Study.objects.values_list("storage_name", flat=True).get(pk=study_id)
    loaded = optuna.load_study(study_name=loaded_name, storage=hpo.storage())
    counts = _trial_counts(loaded)
    importances = hpo.param_importances(loaded)
    complete = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    with transaction.atomic():
        study = Study.objects.select_for_update(of=("self",)).select_related("pipeline_run").get(pk=study_id)
        if study.status != StudyStatus.RUNNING:
            return
        pipeline_run = study.pipeline_run
        stage = _train_stage(pipeline_run)
        now = timezone.now()
        study.ended_at = now
        study.importances = importances
        if pipeline_run.status in (PipelineRunStatus.CANCELLING, PipelineRunStatus.CANCELLED):
            study.status = StudyStatus.CANCELLED
            study.save()
            pipeline_stage_complete(stage_id=stage.pk, status=PipelineStageStatus.CANCELLED, outputs={}, error="")
            return
        outputs: dict[str, Any] = {"study_id": study.pk, "trials": counts, "metric": study.metric}
        if not complete:
            first_error = (
                Run.objects.filter(study=study, status=RunStatus.FAILED)
                .exclude(error="")
                .values_list("error", flat=True)
            ).first()
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trial ran"
            error = f"no trial completed ({summary})" + (f"; first error: {first_error}" if first_error else "")
            study.status, study.error = StudyStatus.FAILED, error
            study.save()
            pipeline_stage_complete(stage_id=stage.pk, status=PipelineStageStatus.FAILED, outputs=outputs, error=error)
            return
        best = loaded.best_trial
        best_run = Run.objects.get(pk=best.user_attrs["run_id"])
        study.status = StudyStatus.SUCCEEDED
        study.best_run = best_run
        study.best_value = best.value
        study.best_params = best.params
        study.save()
        _adopt_candidate(pipeline_run=pipeline_run, best_run=best_run)
        audit_record(
            actor=None,
            action="study.succeeded",
            obj=study,
            project=pipeline_run.project,
            before={"status": StudyStatus.RUNNING},
            after={"status": StudyStatus.SUCCEEDED, "best_run": best_run.pk, "best_value": best.value},
        )
        outputs.update(
            best_run_id=best_run.pk,
            best_trial=best.number,
            best_value=best.value,
            best_params=best.params,
            algorithm=best_run.algorithm,
            direction=study.direction,
        )
        pipeline_stage_complete(stage_id=stage.pk, status=PipelineStageStatus.SUCCEEDED, outputs=outputs)


def _adopt_candidate(*, pipeline_run: PipelineRun, best_run: Run) -> None:
    """The pipeline's run takes the best trial's params, metrics, plots and model (the same stored bundle)."""
    parent = Run.objects.select_for_update().get(pk=pipeline_run.run_id)
    parent.params = {**best_run.params, "best_trial": best_run.trial_number}
    parent.metrics = {**parent.metrics, **best_run.metrics}
    for name in ("cv_metrics", "plots", "task", "algorithm", "passes_thresholds", "threshold_failures"):
        setattr(parent, name, getattr(best_run, name))
    parent.package_versions = best_run.package_versions
    parent.save()
    model = best_run.artifacts.filter(kind=RunArtifactKind.MODEL).first()
    if model is not None:
        run_artifact_link(run=parent, source=model)
    PipelineRun.objects.filter(pk=pipeline_run.pk).update(candidate_run=best_run)


def study_trial_lost(*, run: Run) -> int:
    """Fail a trial run whose worker died for good (no heartbeat, no retry left); returns 1 if it ended it."""
    error = "the worker running this trial stopped reporting (killed, out of memory or restarted)"
    ended = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=RunStatus.FAILED, error=error, ended_at=timezone.now()
    )
    if not ended:
        return 0
    study = Study.objects.get(pk=run.study_id)
    try:
        _tell_failed(study, run.trial_number)
    except (KeyError, ValueError, RuntimeError):
        logger.warning("could not close Optuna trial %s of %s", run.trial_number, study.storage_name)
    _slot_done(study_id=study.pk, slot=run.trial_slot, note=f"trial slot {run.trial_slot}: failed ({error})")
    return 1


def study_trials_reap_stale(*, now: datetime) -> int:
    """Fail the trial runs whose heartbeat stopped longer than REAP_AFTER ago; returns how many it ended."""
    stale = Run.objects.filter(status=RunStatus.RUNNING, study__isnull=False, heartbeat_at__lt=now - REAP_AFTER)
    return sum(study_trial_lost(run=run) for run in stale)


def study_trial_revoked(*, study_id: int, slot: int, task_id: str) -> None:
    """The worker terminated a trial task on a revoke (the pipeline was cancelled): end its run."""
    run = Run.objects.filter(study_id=study_id, trial_slot=slot, task_id=task_id, status=RunStatus.RUNNING).first()
    if run is None:
        return
    ended = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=RunStatus.CANCELLED, error="cancelled by request (the task was terminated)", ended_at=timezone.now()
    )
    if ended:
        study = Study.objects.get(pk=study_id)
        try:
            _tell_failed(study, run.trial_number)
        except (KeyError, ValueError, RuntimeError):
            logger.warning("could not close Optuna trial %s of %s", run.trial_number, study.storage_name)
        _slot_done(study_id=study_id, slot=slot, note=f"trial slot {slot}: cancelled")
