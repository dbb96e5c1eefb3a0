"""A real Celery worker process on Redis profiles an uploaded dataset version."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.core.choices import JobStatus
from apps.core.models import Job
from apps.datasets.models import Dataset, DatasetVersion
from apps.datasets.tasks import dataset_version_profile_task
from tests.conftest import SMALL_CLASSIFICATION_CSV, client_for
from tests.e2e.conftest import CeleryWorker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_worker_profiles_an_upload_once(celery_worker: CeleryWorker, dataset: Dataset, member: object) -> None:
    response = client_for(member).post(
        f"/api/v1/datasets/{dataset.pk}/versions/",
        {"file": SimpleUploadedFile("flowers.csv", SMALL_CLASSIFICATION_CSV)},
        format="multipart",
    )
    assert response.status_code == 201
    assert response.json()["status"] == "pending", "the request does not profile; the worker does"

    version = wait_for(
        lambda: DatasetVersion.objects.filter(pk=response.json()["id"], status__in=["ready", "failed"]).first(),
        timeout=60,
        what=f"the worker to profile the version; worker log:\n{celery_worker.log()[-2000:]}",
    )
    assert version.status == "ready", version.error
    assert version.profile["columns"]["species"]["top"][0]["count"] == 20
    assert version.validation["status"] in {"pass", "warn"}
    job = Job.objects.get(pk=version.job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and "read 60 rows" in job.log
    assert "datasets.profile_version" in celery_worker.log()

    # A second delivery of the same message (a redelivery after a lost ack) changes nothing.
    succeeded = celery_worker.log().count("succeeded")
    dataset_version_profile_task.delay(version.pk)
    wait_for(lambda: celery_worker.log().count("succeeded") > succeeded, timeout=30, what="the duplicate task to run")
    again = DatasetVersion.objects.get(pk=version.pk)
    assert again.profiled_at == version.profiled_at
    assert Job.objects.get(pk=version.job_id).attempts == 1
