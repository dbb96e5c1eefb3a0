"""/metrics: access (token or loopback), the figures it exposes against the rows they come from, and the shipped
Grafana dashboard, whose every PromQL metric name must be exposed."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.monitoring import services
from apps.monitoring.tasks import heartbeat_task
from apps.telemetry.models import PredictionRollup
from apps.telemetry.selectors import minute_floor
from tests.monitoring.conftest import log_traffic

pytestmark = pytest.mark.django_db
DASHBOARD = Path(settings.BASE_DIR) / "deploy" / "grafana" / "mlops-console.json"


def scrape(client: Client | None = None, **headers: Any) -> str:
    answer = (client or Client()).get("/metrics", REMOTE_ADDR="127.0.0.1", **headers)
    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"].startswith("text/plain; version=")
    return answer.content.decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def test_without_a_token_only_loopback_is_answered(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_with_a_token_a_bearer_is_required_from_anywhere(settings: Any) -> None:
    settings.METRICS_TOKEN = "s3cret-metrics"
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    wrong = Client().get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    right = Client().get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert right.status_code == 200 and b"mlops_celery_queue_depth" in right.content


def test_http_requests_and_celery_tasks_are_counted() -> None:
    before = scrape()
    for _ in range(3):
        assert Client().get("/healthz").status_code == 200
    heartbeat_task.delay()
    after = scrape()
    key = {"method": "GET", "view": "healthz", "status": "200"}
    assert (
        value(after, "mlops_http_requests_total", **key) - (value(before, "mlops_http_requests_total", **key) or 0) == 3
    )
    task = {"task": "monitoring.heartbeat", "outcome": "success"}
    assert value(after, "mlops_celery_tasks_total", **task) == 1
    assert value(after, "mlops_celery_task_duration_seconds_count", **task) == 1
    assert value(after, "mlops_celery_task_duration_seconds_bucket", le="+Inf", **task) == 1
    assert value(after, "mlops_celery_queue_depth", queue=settings.CELERY_TASK_DEFAULT_QUEUE) is not None
    assert value(after, "mlops_up", component="database") == 1 and value(after, "mlops_up", component="broker") == 1
    assert value(after, "mlops_heartbeat_timestamp_seconds", component="worker") > 0


def test_deployment_figures_come_from_the_rollups_and_the_latest_drift_report(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    # Traffic in the last whole minutes (the window /metrics reads) and an hour ago (drift reference window).
    log_traffic(deployment, rows=200, drifted=True, start=minute_floor(now) - timedelta(minutes=4), seed=3)
    log_traffic(deployment, rows=400, drifted=True, seed=4)
    with django_capture_on_commit_callbacks(execute=True):
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    report.refresh_from_db()
    text = scrape()
    end = minute_floor(timezone.now())
    expected = PredictionRollup.objects.filter(
        deployment_id=deployment.pk, minute__gte=end - timedelta(minutes=5), minute__lt=end, shadow=False
    ).aggregate(n=Sum("requests"))["n"]
    labels = {"deployment": "iris", "project": deployment.project.slug}
    assert expected and value(text, "mlops_deployment_requests_per_second", version="v1", **labels) == pytest.approx(
        expected / 300
    )
    assert value(text, "mlops_deployment_error_ratio", version="v1", **labels) == 0
    # Every latency is 2 ms: in the (1, 2.5] ms bucket, the median interpolates to 1.75 ms.
    assert value(text, "mlops_deployment_latency_seconds", version="v1", quantile="0.5", **labels) == pytest.approx(
        0.00175
    )
    assert value(text, "mlops_deployment_drift_share", **labels) == pytest.approx(report.drift_share)
    assert value(text, "mlops_deployment_dataset_drift", **labels) == 1
    assert value(text, "mlops_deployment_replicas", state="desired", **labels) == deployment.replicas


def test_every_metric_the_grafana_dashboard_uses_is_exposed(
    deployment: Any, member: Any, django_capture_on_commit_callbacks: Any
) -> None:
    log_traffic(deployment, rows=200, drifted=False, start=minute_floor(timezone.now()) - timedelta(minutes=3))
    with django_capture_on_commit_callbacks(execute=True):
        services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=1))
    deployment.observed = {"replicas": []}
    deployment.observed_at = timezone.now()
    deployment.save(update_fields=["observed", "observed_at"])
    Client(HTTP_AUTHORIZATION=f"Bearer {deployment.ingest_token()}").post(
        "/api/v1/ingest/predictions/",
        {"events": [], "server": "h:1", "dropped": {"buffer_full": 1}},
        content_type="application/json",
    )
    Client().get("/healthz")
    heartbeat_task.delay()
    exposed = {sample.name for family in text_string_to_metric_families(scrape()) for sample in family.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    used = {name for query in queries for name in re.findall(r"\bmlops_[a-z0-9_]+", query)}
    assert len(used) >= 15
    assert used <= exposed, f"not exposed: {sorted(used - exposed)}"


def child_database_url() -> str:
    """The test database, for a child process (DATABASE_URL names the database the tests were started with)."""
    database = connection.settings_dict
    return f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"


def test_with_a_multiprocess_folder_each_web_worker_counts_into_it(tmp_path: Path) -> None:
    """As under gunicorn with PROMETHEUS_MULTIPROC_DIR: a web process counts its requests into the shared folder
    (its own files), where another process (here: this one) reads them; the adding up over processes is the
    library's own."""
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = tmp_path / "prometheus"
    folder.mkdir()
    script = (
        "from django.test import Client\n"
        "for _ in range(3):\n"
        "    assert Client().get('/healthz').status_code == 200\n"
        "assert b'mlops_http_requests_total' in Client().get('/metrics', REMOTE_ADDR='127.0.0.1').content\n"
    )
    done = subprocess.run(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "shell", "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "DATABASE_URL": child_database_url()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    text = generate_latest(registry).decode()
    assert value(text, "mlops_http_requests_total", method="GET", view="healthz", status="200") == 3
