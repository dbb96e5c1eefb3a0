"""Retention of prediction telemetry: per-project settings (page and API) and the beat task's batched deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.core.models import AuditEntry, Project
from apps.telemetry import services
from apps.telemetry.models import LabelledPrediction, PredictionLabel, PredictionLog, PredictionRollup
from apps.telemetry.tasks import predictions_retention_apply_task
from tests.conftest import client_for
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def log(project_id: int, days_old: float, count: int = 1) -> None:
    created = NOW - timedelta(days=days_old)
    PredictionLog.objects.bulk_create(
        PredictionLog(
            deployment_id=1,
            project_id=project_id,
            request_id=f"{project_id}-{days_old}-{i}",
            status=200,
            created_at=created,
        )
        for i in range(count)
    )
    PredictionRollup.objects.create(
        deployment_id=project_id, project_id=project_id, model_version_id=int(days_old), minute=created, requests=count
    )


def test_rows_older_than_their_projects_retention_are_deleted(project: Project) -> None:
    other = ProjectFactory()
    other.prediction_log_retention_days, other.prediction_rollup_retention_days = 2, 5
    other.save()
    gone = max(Project.objects.values_list("pk", flat=True)) + 1  # a deleted project: the defaults apply
    for project_id in (project.pk, other.pk, gone):
        for days_old in (1, 3, 29, 31, 399, 401):
            log(project_id, days_old)
    deleted = services.predictions_retention_apply(now=NOW)
    kept = {
        project_id: sorted(
            round((NOW - created).days)
            for created in PredictionLog.objects.filter(project_id=project_id).values_list("created_at", flat=True)
        )
        for project_id in (project.pk, other.pk, gone)
    }
    assert kept == {project.pk: [1, 3, 29], other.pk: [1], gone: [1, 3, 29]}
    rollups = {
        project_id: sorted(
            PredictionRollup.objects.filter(project_id=project_id).values_list("model_version_id", flat=True)
        )
        for project_id in (project.pk, other.pk, gone)
    }
    assert rollups == {project.pk: [1, 3, 29, 31, 399], other.pk: [1, 3], gone: [1, 3, 29, 31, 399]}
    assert deleted == {"log_rows": 3 + 5 + 3, "rollup_rows": 1 + 4 + 1, "label_rows": 0}


def test_labels_go_with_the_raw_rows(project: Project) -> None:
    for request_id, days_old in (("fresh", 29), ("old", 31)):
        PredictionLabel.objects.create(
            deployment_id=1,
            project_id=project.pk,
            request_id=request_id,
            kind="label",
            truth=["a"],
            source="api",
            received_at=NOW - timedelta(days=days_old),
        )
    assert services.predictions_retention_apply(now=NOW)["label_rows"] == 1
    assert list(PredictionLabel.objects.values_list("request_id", flat=True)) == ["fresh"]


def test_the_record_of_labelled_predictions_goes_with_the_raw_rows(project: Project) -> None:
    log(project.pk, days_old=29, count=2)
    log(project.pk, days_old=31, count=3)
    PredictionLog.objects.update(outputs=["a"])
    services.labelled_predictions_record(set(PredictionLog.objects.values_list("deployment_id", "request_id")))
    assert LabelledPrediction.objects.count() == 5
    services.predictions_retention_apply(now=NOW)
    kept = set(LabelledPrediction.objects.values_list("log_id", flat=True))
    assert kept == set(PredictionLog.objects.values_list("pk", flat=True)) and len(kept) == 2


def test_deletes_go_in_bounded_batches(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "RETENTION_BATCH_ROWS", 40)
    log(project.pk, days_old=45, count=100)
    log(project.pk, days_old=1, count=10)
    with CaptureQueriesContext(connection) as queries:
        assert services.predictions_retention_apply(now=NOW)["log_rows"] == 100
    deletes = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE") and "predictionlog" in q["sql"]
    ]
    assert len(deletes) == 3, "100 rows in batches of at most 40"
    assert all('"id" IN' in sql for sql in deletes), "each a bounded set of primary keys"
    assert PredictionLog.objects.count() == 10


def test_the_beat_task_runs_the_service(project: Project) -> None:
    assert django_settings.CELERY_BEAT_SCHEDULE["telemetry-retention"]["task"] == "telemetry.retention_apply"
    log(project.pk, days_old=40)
    assert predictions_retention_apply_task.delay().get()["log_rows"] == 1


def test_retention_in_the_project_api(project: Project, owner: Any, viewer: Any) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    api = client_for(owner)
    assert api.get(url).json()["prediction_log_retention_days"] == 30
    assert api.get(url).json()["prediction_rollup_retention_days"] == 400
    for field in ("prediction_log_retention_days", "prediction_rollup_retention_days"):
        for bad in (0, -3, "soon", 1.5, None):
            refused = api.patch(url, {field: bad}, format="json")
            assert refused.status_code == 400 and field in refused.json(), (field, bad)
    assert client_for(viewer).patch(url, {"prediction_log_retention_days": 7}, format="json").status_code == 403
    saved = api.patch(url, {"prediction_log_retention_days": 7, "prediction_rollup_retention_days": 90}, format="json")
    assert saved.status_code == 200
    project.refresh_from_db()
    assert (project.prediction_log_retention_days, project.prediction_rollup_retention_days) == (7, 90)
    assert AuditEntry.objects.filter(action="project.updated", after__prediction_log_retention_days=7).exists()


def test_retention_on_the_project_page(project: Project, owner: Any, viewer: Any) -> None:
    page, retention = f"/projects/{project.slug}/", f"/projects/{project.slug}/retention/"
    browser = Client()
    browser.force_login(viewer)
    assert "kept 30 days, per-minute rollups 400 days" in browser.get(page).content.decode()
    assert (
        browser.post(retention, {"prediction_log_retention_days": 1, "prediction_rollup_retention_days": 1}).status_code
        == 403
    )
    browser.force_login(owner)
    assert 'name="prediction_log_retention_days" value="30"' in browser.get(page).content.decode()
    refused = browser.post(
        retention, {"prediction_log_retention_days": 0, "prediction_rollup_retention_days": 10}, follow=True
    )
    assert "Retention not saved: Raw prediction rows (days)" in refused.content.decode()
    project.refresh_from_db()
    assert project.prediction_log_retention_days == 30 and project.prediction_rollup_retention_days == 400
    browser.post(retention, {"prediction_log_retention_days": 14, "prediction_rollup_retention_days": 100})
    project.refresh_from_db()
    assert (project.prediction_log_retention_days, project.prediction_rollup_retention_days) == (14, 100)
