"""The job service: queued -> running -> succeeded | failed, each step a conditional update."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.choices import JobStatus
from apps.core.jobs import JobProgress, job_claim, job_finish, job_progress, job_start
from apps.core.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(project: object, owner: object) -> Job:
    return job_start(kind="test.work", project=project, actor=owner, obj=project)


def test_start_records_a_queued_job_on_its_object(job: Job, project: object, owner: object) -> None:
    assert job.status == JobStatus.QUEUED and job.kind == "test.work" and job.created_by == owner
    assert job.object_type == "core.project" and job.object_id == str(project.pk)
    assert job.started_at is None and job.attempts == 0


def test_a_job_runs_to_success_with_timings_and_log(job: Job) -> None:
    running = job_claim(job=job)
    assert running.status == JobStatus.RUNNING and running.attempts == 1 and running.started_at
    job_progress(job=running, fraction=0.25, message="read the file")
    job_progress(job=running, fraction=None, message="still reading")
    assert Job.objects.get(pk=job.pk).progress == 0.25
    job_progress(job=running, fraction=0.5, message="half way")
    done = job_finish(job=running)
    assert done.status == JobStatus.SUCCEEDED and done.progress == 1.0 and done.error == ""
    assert done.log == "read the file\nstill reading\nhalf way\n"
    assert done.finished_at >= done.started_at and done.duration_seconds is not None


def test_a_failed_job_keeps_the_traceback_and_logs_the_message(job: Job) -> None:
    running = job_claim(job=job)

    def explode() -> None:
        raise RuntimeError("the disk is full")

    try:
        explode()
    except RuntimeError as exc:
        done = job_finish(job=running, error=exc)
    assert done.status == JobStatus.FAILED and done.finished_at
    assert done.log == "failed: RuntimeError: the disk is full\n"
    assert "Traceback (most recent call last)" in done.error and "in explode" in done.error
    assert done.error.rstrip().endswith("RuntimeError: the disk is full")


def test_a_job_is_claimed_once(job: Job) -> None:
    assert job_claim(job=job) is not None
    assert job_claim(job=job) is None
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_a_finished_job_is_not_claimed_again(job: Job) -> None:
    job_finish(job=job_claim(job=job))
    assert job_claim(job=job, stale_after=timedelta(0)) is None
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED


def test_a_stale_running_job_is_taken_over_and_fences_out_the_old_worker(job: Job) -> None:
    first = job_claim(job=job, now=timezone.now() - timedelta(hours=1))
    assert job_claim(job=job, stale_after=timedelta(hours=2)) is None
    second = job_claim(job=job, stale_after=timedelta(minutes=30))
    assert second is not None and second.attempts == 2
    with pytest.raises(ValidationError) as progress_refused:
        job_progress(job=first, fraction=0.5, message="the old worker is still busy")
    assert "taken over by another worker (attempt 2)" in str(progress_refused.value.message_dict["status"])
    with pytest.raises(ValidationError) as finish_refused:
        job_finish(job=first)
    assert "status" in finish_refused.value.message_dict
    assert job_finish(job=second).status == JobStatus.SUCCEEDED
    assert "the old worker" not in Job.objects.get(pk=job.pk).log


@pytest.mark.parametrize("action", ["progress", "finish"])
def test_a_queued_job_refuses_progress_and_finish(job: Job, action: str) -> None:
    with pytest.raises(ValidationError) as refused:
        if action == "progress":
            job_progress(job=job, fraction=0.1, message="too early")
        else:
            job_finish(job=job)
    assert "is queued, not running" in str(refused.value.message_dict["status"])
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


@pytest.mark.parametrize("error", [None, RuntimeError("late")])
def test_a_finished_job_refuses_progress_and_a_second_finish(job: Job, error: Exception | None) -> None:
    running = job_claim(job=job)
    job_finish(job=running, error=error)
    finished = Job.objects.get(pk=job.pk)
    with pytest.raises(ValidationError) as refused:
        job_progress(job=running, fraction=0.9, message="after the end")
    assert f"is {finished.status}, not running" in str(refused.value.message_dict["status"])
    with pytest.raises(ValidationError):
        job_finish(job=running)
    assert Job.objects.get(pk=job.pk).log == finished.log and Job.objects.get(pk=job.pk).status == finished.status


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan"), float("inf")])
def test_progress_outside_zero_to_one_names_the_field(job: Job, fraction: float) -> None:
    running = job_claim(job=job)
    with pytest.raises(ValidationError) as refused:
        job_progress(job=running, fraction=fraction, message="off the scale")
    assert set(refused.value.message_dict) == {"fraction"}
    assert Job.objects.get(pk=job.pk).log == ""


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_progress_bounds_are_inclusive(job: Job, fraction: float) -> None:
    running = job_claim(job=job)
    job_progress(job=running, fraction=fraction, message="at the edge")
    assert Job.objects.get(pk=job.pk).progress == fraction


def test_progress_of_a_deleted_job_names_the_job(job: Job) -> None:
    running = job_claim(job=job)
    Job.objects.filter(pk=job.pk).delete()
    with pytest.raises(ValidationError) as refused:
        job_progress(job=running, fraction=0.5, message="nobody is listening")
    assert "no longer exists" in str(refused.value.message_dict["job"])


def test_the_progress_callback_batches_lines_until_flushed(job: Job) -> None:
    running = job_claim(job=job)
    progress = JobProgress(running, interval_seconds=3600)
    progress(0.1, "first")  # the first report is written at once, so the UI sees the job move
    progress(0.2, "second")
    progress(0.3, "third")
    assert Job.objects.get(pk=job.pk).log == "first\n"
    progress.flush()
    row = Job.objects.get(pk=job.pk)
    assert row.log == "first\nsecond\nthird\n" and row.progress == 0.3
