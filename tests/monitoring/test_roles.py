"""Every monitoring page and endpoint as viewer, editor, owner and outsider (404), and the bad input each one
can meet: a reference with no rows, a window with no data, a deployment with no traffic."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.monitoring import services
from apps.monitoring.models import DriftReference, DriftReport
from tests.conftest import client_for
from tests.monitoring.conftest import log_traffic

pytestmark = pytest.mark.django_db


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def report(deployment: Any, member: Any, django_capture_on_commit_callbacks: Any) -> DriftReport:
    log_traffic(deployment, rows=200, drifted=True)
    with django_capture_on_commit_callbacks(execute=True):
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    report.refresh_from_db()
    return report


def test_reading_pages_and_api_by_role(
    report: DriftReport, viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    deployment = report.deployment
    pages = [
        report.get_absolute_url(),
        f"/monitoring/drift/settings/{deployment.pk}/",
    ]
    api = [
        f"/api/v1/drift-reports/{report.pk}/",
        f"/api/v1/drift-settings/{deployment.pk}/",
    ]
    for user in (viewer, member, owner):
        for url in pages:
            assert browser(user).get(url).status_code == 200, (user, url)
        for url in api:
            assert client_for(user).get(url).status_code == 200, (user, url)
        assert f"#{report.pk}" in browser(user).get("/monitoring/drift/").content.decode()
        assert [row["id"] for row in client_for(user).get("/api/v1/drift-reports/").json()["results"]] == [report.pk]
        assert len(client_for(user).get("/api/v1/drift-references/").json()["results"]) == 1
        assert [row["name"] for row in client_for(user).get("/api/v1/health/").json()["deployments"]] == ["iris"]
        assert b'data-deployment="iris"' in browser(user).get("/monitoring/health/").content
    for url in pages:
        assert browser(outsider).get(url).status_code == 404, url
    for url in api:
        assert client_for(outsider).get(url).status_code == 404, url
    assert f"#{report.pk}" not in browser(outsider).get("/monitoring/drift/").content.decode()
    assert client_for(outsider).get("/api/v1/drift-reports/").json()["results"] == []
    assert client_for(outsider).get("/api/v1/drift-references/").json()["results"] == []
    assert client_for(outsider).get("/api/v1/health/").json()["deployments"] == []
    assert b'data-deployment="iris"' not in browser(outsider).get("/monitoring/health/").content
    for url in (*pages, "/monitoring/drift/", "/monitoring/health/"):
        assert Client().get(url).status_code == 302, url


def test_running_and_building_by_role(
    deployment: Any, viewer: Any, member: Any, owner: Any, outsider: Any, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    log_traffic(deployment, rows=100, drifted=False, start=now - timedelta(hours=3))
    run = {"deployment": deployment.pk, "window": "4h"}
    reference = {
        "deployment": deployment.pk,
        "source": "traffic",
        "start": (now - timedelta(hours=4)).isoformat(),
        "end": now.isoformat(),
    }
    page = f"/monitoring/drift/run/{deployment.pk}/"
    assert client_for(outsider).post("/api/v1/drift-reports/", run, format="json").status_code == 404
    assert client_for(outsider).post("/api/v1/drift-references/", reference, format="json").status_code == 404
    assert browser(outsider).post(page, {"window": "24h"}).status_code == 404
    assert client_for(viewer).post("/api/v1/drift-reports/", run, format="json").status_code == 403
    assert client_for(viewer).post("/api/v1/drift-references/", reference, format="json").status_code == 403
    assert browser(viewer).post(page, {"window": "24h"}).status_code == 403
    assert DriftReport.objects.count() == 0 and DriftReference.objects.count() == 0
    for user in (member, owner):
        with django_capture_on_commit_callbacks(execute=True):
            assert client_for(user).post("/api/v1/drift-references/", reference, format="json").status_code == 201
            assert client_for(user).post("/api/v1/drift-reports/", run, format="json").status_code == 202
            assert browser(user).post(page, {"window": "24h"}).status_code == 302
    assert DriftReference.objects.count() == 2 and DriftReport.objects.count() == 4


def test_a_reference_with_no_rows_is_refused_with_a_clear_message(deployment: Any, member: Any) -> None:
    now = timezone.now()
    log_traffic(deployment, rows=100, drifted=False, start=now - timedelta(hours=1))
    empty = {
        "deployment": deployment.pk,
        "source": "traffic",
        "start": (now - timedelta(days=3)).isoformat(),
        "end": (now - timedelta(days=2)).isoformat(),
    }
    answer = client_for(member).post("/api/v1/drift-references/", empty, format="json")
    assert answer.status_code == 400
    assert answer.json() == {"window": ["The reference has no rows: there is nothing to compare with."]}
    assert DriftReference.objects.count() == 0


def test_a_window_with_no_data_and_a_deployment_with_no_traffic(deployment: Any, member: Any, viewer: Any) -> None:
    """No traffic at all: a report is refused naming the window; health and /metrics show the deployment with
    nothing to report (no figures, no NaN) rather than failing."""
    answer = client_for(member).post(
        "/api/v1/drift-reports/", {"deployment": deployment.pk, "window": "24h"}, format="json"
    )
    assert answer.status_code == 400
    assert "logged no predictions" in answer.json()["window"][0]
    row = client_for(viewer).get("/api/v1/health/").json()["deployments"][0]
    assert row["shipping"]["servers"] == 0 and row["replicas"] == []
    page = browser(viewer).get("/monitoring/health/").content.decode()
    assert "no report yet" in page and "NaN" not in page
    metrics = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert 'mlops_deployment_requests_per_second{deployment="iris"' not in metrics
    assert "NaN" not in metrics
    # Traffic, but older than the window asked for: the same clear refusal.
    log_traffic(deployment, rows=100, drifted=False, start=timezone.now() - timedelta(days=3))
    answer = client_for(member).post(
        "/api/v1/drift-reports/", {"deployment": deployment.pk, "window": "1h"}, format="json"
    )
    assert answer.status_code == 400 and "choose a window with traffic" in answer.json()["window"][0]
