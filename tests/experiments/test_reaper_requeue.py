"""A whole worker SIGKILLed mid-stage: its message stays unacknowledged until the broker's visibility timeout
(an hour), so the reaper re-queues the stage once (attempt 2) instead of failing the run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core.queueing import QUEUE_DOWN_MESSAGE
from apps.experiments import services
from apps.experiments.models import PipelineRun, PipelineStage
from apps.experiments.services import pipelines
from tests.conftest import client_for
from tests.core import test_broker_down
from tests.experiments.conftest import IRIS_CONFIG

own_redis = test_broker_down.own_redis  # the fixture: a redis-server of the test's own, stoppable


def _dead_worker_stage(pipeline_run: PipelineRun, attempts: int) -> PipelineStage:
    """The ingest stage as a killed worker leaves it: running, its heartbeat five minutes old."""
    PipelineRun.objects.filter(pk=pipeline_run.pk).update(status="running")
    stage = pipeline_run.stages.get(name="ingest")
    PipelineStage.objects.filter(pk=stage.pk).update(
        status="running", attempts=attempts, heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    stage.refresh_from_db()
    return stage


def test_the_reaper_requeues_a_dead_workers_stage_once(
    project, owner, iris, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks():  # the first stage's message is "lost" with its worker
        pipeline_run = services.pipeline_run_create(
            project=project, actor=owner, config_text=IRIS_CONFIG, executor=services.EXECUTOR_WORKER
        )
    stage = _dead_worker_stage(pipeline_run, attempts=1)
    first_task = stage.task_id
    with django_capture_on_commit_callbacks() as sent:
        assert services.pipeline_runs_reap_stale() == 0, "re-queued, not ended"
    stage.refresh_from_db()
    assert stage.status == "queued" and stage.task_id != first_task and len(sent) == 1
    assert "stopped reporting 30" in stage.log and "re-queued, attempt 2 of 2" in stage.log
    # The dead worker's message, redelivered an hour later, is no longer the stage's.
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=first_task)
    stage.refresh_from_db()
    assert stage.status == "queued" and stage.attempts == 1
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "succeeded" and stage.attempts == 2
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "running"


def test_a_second_dead_worker_fails_the_stage(project, owner, iris, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks():
        pipeline_run = services.pipeline_run_create(
            project=project, actor=owner, config_text=IRIS_CONFIG, executor=services.EXECUTOR_WORKER
        )
    stage = _dead_worker_stage(pipeline_run, attempts=2)
    assert services.pipeline_runs_reap_stale() == 1
    stage.refresh_from_db()
    assert stage.status == "failed" and "no retry took over" in stage.error
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "failed"


def test_a_stage_whose_message_was_never_sent_is_sent_again(
    project, owner, iris, django_capture_on_commit_callbacks
) -> None:
    """The broker was down when the stage was queued (the user was answered 503): the reaper sends its message
    again, under the same task id, once it has waited UNCLAIMED_RESEND_AFTER unclaimed."""
    with django_capture_on_commit_callbacks():  # the send after commit never reached the broker
        pipeline_run = services.pipeline_run_create(
            project=project, actor=owner, config_text=IRIS_CONFIG, executor=services.EXECUTOR_WORKER
        )
    stage = pipeline_run.stages.get(name="ingest")
    task_id = stage.task_id
    assert services.pipeline_runs_reap_stale() == 0
    stage.refresh_from_db()
    assert stage.status == "queued", "queued a moment ago: its message may wait behind others"
    waited = timezone.now() - pipelines.UNCLAIMED_RESEND_AFTER - timedelta(seconds=1)
    PipelineStage.objects.filter(pk=stage.pk).update(heartbeat_at=waited)
    services.pipeline_runs_reap_stale()  # tasks run eagerly here: the message sent again runs the stage
    stage.refresh_from_db()
    assert (stage.status, stage.attempts, stage.task_id) == ("succeeded", 1, task_id)


@pytest.mark.django_db(transaction=True)
def test_starting_and_cancelling_a_pipeline_with_redis_down(own_redis, project, owner, iris) -> None:
    """Starting answers 503 and the run waits, queued, for the reaper; a cancel is not refused (the revoke only
    hurries it: the stage reads the run's status at its next cancel check)."""
    own_redis.stop()
    client = client_for(owner)
    started = client.post(
        "/api/v1/pipeline-runs/", {"project": project.slug, "config_yaml": IRIS_CONFIG}, format="json"
    )
    assert started.status_code == 503 and started.json() == {"detail": QUEUE_DOWN_MESSAGE}
    pipeline_run = PipelineRun.objects.get()
    stage = pipeline_run.stages.get(name="ingest")
    assert stage.status == "queued" and stage.heartbeat_at is not None, "saved, waiting for its message"
    PipelineStage.objects.filter(pk=stage.pk).update(status="running", attempts=1)
    cancelled = client.post(f"/api/v1/pipeline-runs/{pipeline_run.pk}/cancel/")
    assert cancelled.status_code == 202, cancelled.content
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "cancelling"
