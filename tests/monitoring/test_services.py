"""Drift services end to end on the database: references, reports as jobs, bad input, the schedule."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.core.choices import JobStatus
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from apps.monitoring import services
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.models import DriftReference, DriftReport
from tests.monitoring.conftest import log_traffic

pytestmark = pytest.mark.django_db


def run(deployment: Any, actor: Any, capture: Any, **window: Any) -> DriftReport:
    with capture(execute=True):
        report = services.drift_report_run(
            deployment=deployment, actor=actor, **(window or {"window": timedelta(hours=2)})
        )
    report.refresh_from_db()
    return report


def test_drifted_window_is_reported_with_the_job_done(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    log_traffic(deployment, rows=600, drifted=True)
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.status == JobStatus.SUCCEEDED
    assert report.job.progress == 1.0
    assert "read 30 logged predictions (600 rows)" in report.job.log
    assert "2 of 2 columns drifted" in report.job.log
    assert report.n_rows == 600
    assert report.dataset_drift is True and report.drift_share == 1.0
    columns = {column["column"]: column for column in report.result["columns"]}
    # A 2,000-row training reference: distances, not p-values (Evidently's default choice).
    assert columns["x"]["test"] == "wasserstein" and columns["x"]["drifted"] is True
    assert columns["colour"]["test"] == "jensenshannon" and columns["colour"]["drifted"] is True
    assert sum(report.histograms["x"]["reference"]) == 2_000
    assert sum(report.histograms["x"]["current"]) == 600
    assert report.histograms["colour"]["x"][0] == "red"
    # The reference was built once from the training dataset version that lineage records.
    reference = DriftReference.objects.get()
    assert reference.source == ReferenceSource.TRAINING
    assert reference.dataset_version == deployment.targets.get().model_version.dataset_version
    assert reference.n_rows == 2_000 and reference.columns == {"x": "numeric", "colour": "categorical"}


def test_undrifted_window_is_not_drifted(deployment: Any, member: Any, django_capture_on_commit_callbacks: Any) -> None:
    log_traffic(deployment, rows=1_000, drifted=False)
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.status == JobStatus.SUCCEEDED
    assert report.dataset_drift is False and report.drift_share == 0.0
    assert all(column["drifted"] is False for column in report.result["columns"])


def test_traffic_reference_and_predictions_without_inputs(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    log_traffic(deployment, rows=400, drifted=False, start=now - timedelta(hours=5))
    reference = services.drift_reference_build(
        deployment=deployment,
        source=ReferenceSource.TRAFFIC,
        actor=member,
        window_start=now - timedelta(hours=6),
        window_end=now - timedelta(hours=4),
    )
    assert reference.n_rows == 400 and reference.source == ReferenceSource.TRAFFIC
    # A 400-row reference: p-value tests; the newest reference of the version is used.
    log_traffic(deployment, rows=200, drifted=True)
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.reference == reference
    tests = {column["column"]: column["test"] for column in report.result["columns"]}
    # A traffic reference profiles the outputs too: every prediction is "a" (z-test on a constant column); no
    # probabilities were logged, so their columns are reported untested.
    assert tests == {"x": "ks", "colour": "chisquare", "prediction": "z", "proba:a": None, "proba:b": None}
    assert report.dataset_drift is True
    # Predictions logged without inputs: a report with a reason, no NaN.
    DriftReport.objects.all().delete()
    from apps.telemetry.models import PredictionLog

    PredictionLog.objects.update(inputs=None)
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.status == JobStatus.SUCCEEDED
    assert report.drift_share is None and report.dataset_drift is None and report.n_rows == 0
    assert report.reason == "The window's predictions were logged without inputs."


def test_bad_input_is_refused_naming_the_field(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with pytest.raises(ValidationError) as refused:
        run(deployment, member, django_capture_on_commit_callbacks)
    assert refused.value.field == "window" and "logged no predictions" in str(refused.value)
    now = timezone.now()
    with pytest.raises(ValidationError) as refused:
        run(deployment, member, django_capture_on_commit_callbacks, start=now, end=now - timedelta(hours=1))
    assert refused.value.field == "start"
    with pytest.raises(ValidationError) as refused:
        services.drift_reference_build(
            deployment=deployment,
            source=ReferenceSource.TRAFFIC,
            actor=member,
            window_start=now - timedelta(days=3),
            window_end=now - timedelta(days=2),
        )
    assert refused.value.field == "window" and "no rows" in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        services.drift_reference_build(deployment=deployment, source="everything", actor=member)
    assert refused.value.field == "source"
    for text in ("0h", "24", "1y", "", "10000d"):
        with pytest.raises(ValidationError) as refused:
            services.parse_window(text)
        assert refused.value.field == "window"
    assert services.parse_window("7d") == timedelta(days=7)
    assert DriftReport.objects.count() == 0 and DriftReference.objects.count() == 0


def test_a_version_without_lineage_needs_a_traffic_reference(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    version = deployment.targets.get().model_version
    version.dataset_version = None
    version.save()
    log_traffic(deployment, rows=100, drifted=False)
    with pytest.raises(Conflict) as refused:
        run(deployment, member, django_capture_on_commit_callbacks)
    assert refused.value.field == "reference"
    with pytest.raises(ValidationError) as refused:
        services.drift_reference_build(deployment=deployment, source=ReferenceSource.TRAINING, actor=member)
    assert refused.value.field == "source"


def test_roles(
    deployment: Any, owner: Any, viewer: Any, outsider: Any, django_capture_on_commit_callbacks: Any
) -> None:
    log_traffic(deployment, rows=100, drifted=False)
    with pytest.raises(PermissionDenied):
        run(deployment, viewer, django_capture_on_commit_callbacks)
    with pytest.raises(NotFound):
        run(deployment, outsider, django_capture_on_commit_callbacks)
    assert run(deployment, owner, django_capture_on_commit_callbacks).status == JobStatus.SUCCEEDED


def test_a_second_delivery_does_nothing_and_a_failure_is_recorded(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any, artifact_root: Any
) -> None:
    log_traffic(deployment, rows=100, drifted=False)
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert services.drift_report_execute(report_id=report.pk) is None
    # A tampered profile: the job fails with the reason on the report, nothing raised.
    path = next(path for path in artifact_root.rglob(report.reference.profile_sha256))
    path.write_bytes(b"tampered")
    with django_capture_on_commit_callbacks(execute=False):
        again = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    again = services.drift_report_execute(report_id=again.pk)
    assert again.status == JobStatus.FAILED
    assert again.reason.startswith("The report failed: ") and again.drift_share is None


def test_check_data_drift_returns_the_finished_report(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    log_traffic(deployment, rows=200, drifted=True)
    with django_capture_on_commit_callbacks() as queued:
        report = services.check_data_drift(deployment=deployment, actor=member)
    # Run in this process: no task is queued that a worker could claim first.
    assert queued == []
    assert isinstance(report, DriftReport)
    assert report.status == JobStatus.SUCCEEDED and report.dataset_drift is True
    assert not math.isnan(report.drift_share)


def test_the_schedule_runs_deployments_with_traffic(
    deployment: Any, project: Any, owner: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.deployments import services as deployment_services
    from tests.factories import ModelVersionFactory, RegisteredModelFactory

    quiet_version = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="quiet"), number=1)
    deployment_services.deployment_create(project=project, name="quiet", actor=owner, model_version=quiet_version)
    settings.MONITORING_DRIFT_INTERVAL_SECONDS = 3600
    log_traffic(deployment, rows=100, drifted=False, start=timezone.now() - timedelta(minutes=30))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.drift_reports_schedule() == 1
    report = DriftReport.objects.get()
    assert report.deployment == deployment and report.status == JobStatus.SUCCEEDED
    assert report.window_end - report.window_start == timedelta(hours=1)
    assert report.job.created_by is None
    # Beat queues the task at the same interval, and the task runs the same service.
    from django.conf import settings as django_settings

    entry = django_settings.CELERY_BEAT_SCHEDULE["monitoring-drift-reports"]
    assert entry == {"task": "monitoring.drift_reports_schedule", "schedule": 3600.0}
    from apps.monitoring.tasks import drift_reports_schedule_task

    log_traffic(deployment, rows=20, drifted=False, start=timezone.now() - timedelta(minutes=5), seed=9)
    with django_capture_on_commit_callbacks(execute=True):
        assert drift_reports_schedule_task.delay().get() == 1
    assert DriftReport.objects.count() == 2


def test_monitoring_imports_no_app_above_it_and_none_below_imports_it() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "apps"
    for app, forbidden in (("monitoring", ("apps.abtests",)), *((a, ("apps.monitoring",)) for a in LOWER_APPS)):
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                assert not [name for name in names if name.startswith(forbidden)], path


LOWER_APPS = ("core", "telemetry", "datasets", "experiments", "registry", "deployments")


def test_traffic_served_by_a_previous_version_counts_and_the_new_version_is_compared(
    deployment: Any, owner: Any, member: Any, training_version: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.deployments import services as deployment_services
    from tests.factories import ModelVersionFactory
    from tests.monitoring.conftest import SIGNATURE

    log_traffic(deployment, rows=200, drifted=False)
    old = deployment.targets.get().model_version
    new = ModelVersionFactory(model=old.model, number=2, signature=SIGNATURE, dataset_version=training_version)
    with django_capture_on_commit_callbacks(execute=False):
        deployment_services.deployment_rollout(deployment=deployment, model_version=new, strategy="direct", actor=owner)
    assert [target.model_version for target in deployment.targets.all()] == [new]
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.model_version == new and report.reference.model_version == new
    assert report.status == JobStatus.SUCCEEDED and report.n_rows == 200


def test_rows_logged_before_inputs_were_by_column_and_odd_values_are_read(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.telemetry import selectors as telemetry
    from apps.telemetry.models import PredictionLog

    log_traffic(deployment, rows=200, drifted=False)
    logs = list(PredictionLog.objects.order_by("id"))
    for log in logs[:5]:  # stored by row, as before issue 9
        log.inputs = telemetry.input_rows(log.inputs)
    # A tensor-like value in a categorical column, and text in a numeric one: one value each, not an error.
    logs[5].inputs = {"x": ["n/a"] * 20, "colour": [[1, 2]] * 20}
    PredictionLog.objects.bulk_update(logs[:6], ["inputs"])
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert report.status == JobStatus.SUCCEEDED and report.n_rows == 200
    x = next(column for column in report.result["columns"] if column["column"] == "x")
    assert x["n_current"] == 180 and x["missing_share_current"] == pytest.approx(0.1)


def test_a_lost_send_is_taken_over_by_the_sweep(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.core.models import Job

    log_traffic(deployment, rows=100, drifted=False)
    with django_capture_on_commit_callbacks(execute=False):  # the send never happens
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    assert services.drift_reports_requeue_stale() == 0  # not late yet
    Job.objects.filter(pk=report.job_id).update(created_at=timezone.now() - timedelta(minutes=6))
    assert services.drift_reports_requeue_stale() == 1
    report.refresh_from_db()
    assert report.status == JobStatus.SUCCEEDED
    assert services.drift_reports_requeue_stale() == 0
