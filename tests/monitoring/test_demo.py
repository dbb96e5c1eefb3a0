"""`manage.py load_demo_monitoring`: traffic with a drifted window, late labels, a traffic reference and drift
reports for the demo iris deployment; idempotent; and on the zero-setup SQLite default, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.deployments import services as deployment_services
from apps.deployments.management.commands.load_demo_deployment import _iris_bundle
from apps.monitoring.models import DriftReport
from apps.registry.services import model_version_register
from apps.telemetry.models import PredictionLabel, PredictionLog
from apps.telemetry.selectors import performance_by_version
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_deployment(project: Any) -> Any:
    project.slug = "demo"
    project.save()
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    with tempfile.TemporaryDirectory() as folder:
        version = model_version_register(
            project=project, model_name="iris", bundle_path=_iris_bundle(Path(folder) / "iris.zip"), actor=admin
        )
    return deployment_services.deployment_create(project=project, name="iris", actor=admin, model_version=version)


def test_the_demo_shows_drift_late_labels_and_an_estimate(demo_deployment: Any) -> None:
    out = StringIO()
    call_command("load_demo_monitoring", stdout=out)
    assert "Logged 960 predictions over 48 hours" in out.getvalue()
    assert PredictionLog.objects.filter(deployment_id=demo_deployment.pk).count() == 960
    labels = PredictionLabel.objects.count()
    reports = list(DriftReport.objects.order_by("window_end"))
    assert len(reports) == 6 and all(report.status == "succeeded" for report in reports)
    # The traffic before the drift is like the reference; the last six hours drift, inputs and predictions.
    assert [report.dataset_drift for report in reports] == [False] * 5 + [True]
    latest = {column["column"]: column for column in reports[-1].result["columns"]}
    assert latest["petal_length"]["drifted"] and latest["prediction"]["drifted"]
    # Accuracy on the drifted window: few labels (they come late), and the CBPE estimate beside them.
    now = timezone.now()
    [recent] = performance_by_version(
        deployment_id=demo_deployment.pk,
        since=now - timedelta(hours=6),
        until=now,
        reference_since=now - timedelta(hours=48),
        reference_until=now - timedelta(hours=6),
    )
    assert 0 < recent.labelled < 0.25 * recent.predictions
    assert recent.realised is not None and recent.estimate is not None, recent.estimate_reason
    # Idempotent: nothing is logged, labelled or reported twice.
    again = StringIO()
    call_command("load_demo_monitoring", stdout=again)
    assert "already" in again.getvalue()
    assert PredictionLog.objects.count() == 960 and PredictionLabel.objects.count() == labels
    assert DriftReport.objects.count() == 6


def test_without_the_demo_deployment_it_says_what_to_run(db: None) -> None:
    with pytest.raises(CommandError, match="load_demo_deployment` first"):
        call_command("load_demo_monitoring")


# One process (each start of Django costs seconds here): migrate and seed as `make run` does, create the iris
# deployment without starting a model server (this command does not need one), then run the command twice.
SQLITE_SCRIPT = """
import tempfile
from pathlib import Path
from django.contrib.auth import get_user_model
from django.core.management import call_command
from apps.core.models import Project
from apps.deployments import services
from apps.deployments.management.commands.load_demo_deployment import _iris_bundle
from apps.registry.services import model_version_register
call_command("migrate", "--noinput", verbosity=0)
call_command("seed_demo")
admin = get_user_model().objects.filter(is_superuser=True).first()
project = Project.objects.get(slug="demo")
with tempfile.TemporaryDirectory() as folder:
    version = model_version_register(
        project=project, model_name="iris", bundle_path=_iris_bundle(Path(folder) / "iris.zip"), actor=admin
    )
services.deployment_create(project=project, name="iris", actor=admin, model_version=version)
print("== first run")
call_command("load_demo_monitoring")
print("== second run")
call_command("load_demo_monitoring")
"""


def test_the_demo_runs_on_the_zero_setup_sqlite_default(tmp_path: Path) -> None:
    """As `make run` does: no DATABASE_URL or broker, DEBUG on."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "SECRET_KEY"}
    }
    env |= {"DEBUG": "1", "VAR_DIR": str(tmp_path / "var"), "DEMO_ADMIN_PASSWORD": "demo-password"}
    done = subprocess.run(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "shell", "-c", SQLITE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.split("== first run")[1].split("== second run")
    assert "Logged 960 predictions" in first and "Made 6 drift reports" in first
    assert "Demo traffic already logged." in second and "Demo drift reports already made." in second
    assert (tmp_path / "var" / "db.sqlite3").exists()
