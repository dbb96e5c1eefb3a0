"""Drift pages, API and command as viewer, editor, owner and outsider; bad input is a 4xx naming the field."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from apps.core.choices import JobStatus
from apps.monitoring import services
from apps.monitoring.models import DriftReport
from tests.conftest import client_for
from tests.monitoring.conftest import log_traffic

pytestmark = pytest.mark.django_db
API = "/api/v1/drift-reports/"


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def report(deployment: Any, member: Any, django_capture_on_commit_callbacks: Any) -> DriftReport:
    log_traffic(deployment, rows=400, drifted=True)
    with django_capture_on_commit_callbacks(execute=True):
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    report.refresh_from_db()
    return report


def test_api_list_detail_and_filters(report: DriftReport, viewer: Any, outsider: Any, project: Any) -> None:
    viewer_api = client_for(viewer)
    listed = viewer_api.get(API).json()
    assert [row["id"] for row in listed["results"]] == [report.pk]
    assert listed["results"][0]["status"] == "succeeded" and listed["results"][0]["dataset_drift"] is True
    assert viewer_api.get(API, {"drifted": "false"}).json()["results"] == []
    assert len(viewer_api.get(API, {"drifted": "true", "project": project.slug}).json()["results"]) == 1
    assert viewer_api.get(API, {"deployment": report.deployment_id + 1}).json()["results"] == []
    detail = viewer_api.get(f"{API}{report.pk}/").json()
    assert {c["column"] for c in detail["result"]["columns"]} == {"x", "colour"}
    assert set(detail["histograms"]) == {"x", "colour"}
    for bad, field in (
        ({"drifted": "maybe"}, "drifted"),
        ({"deployment": "x"}, "deployment"),
        ({"colour": 1}, "colour"),
    ):
        answer = viewer_api.get(API, bad)
        assert answer.status_code == 400 and field in answer.json()
    outsider_api = client_for(outsider)
    assert outsider_api.get(API).json()["results"] == []
    assert outsider_api.get(f"{API}{report.pk}/").status_code == 404


def test_api_run_by_role(
    deployment: Any,
    member: Any,
    owner: Any,
    viewer: Any,
    outsider: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    log_traffic(deployment, rows=100, drifted=False)
    body = {"deployment": deployment.pk, "window": "2h"}
    assert client_for(viewer).post(API, body, format="json").status_code == 403
    assert client_for(outsider).post(API, body, format="json").status_code == 404
    assert client_for(member).post(API, {"deployment": 999999, "window": "2h"}, format="json").status_code == 404
    for user in (member, owner):
        with django_capture_on_commit_callbacks(execute=True):
            answer = client_for(user).post(API, body, format="json")
        assert answer.status_code == 202, answer.json()
        assert answer.json()["status"] == "queued"
        assert DriftReport.objects.get(pk=answer.json()["id"]).status == JobStatus.SUCCEEDED


def test_api_run_bad_input(deployment: Any, member: Any) -> None:
    api = client_for(member)
    now = timezone.now()
    cases = [
        ({"deployment": deployment.pk, "window": "2h"}, 400, "window"),  # no traffic
        ({"deployment": deployment.pk, "window": "soon"}, 400, "window"),
        ({"deployment": deployment.pk, "window": "2h", "start": now.isoformat()}, 400, "window"),
        (
            {"deployment": deployment.pk, "start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()},
            400,
            "start",
        ),
        ({"deployment": "first", "window": "2h"}, 400, "deployment"),
        ({"window": "2h"}, 400, "deployment"),
    ]
    for body, status, field in cases:
        answer = api.post(API, body, format="json")
        assert answer.status_code == status, (body, answer.content)
        assert field in answer.json(), (body, answer.json())
    refs = "/api/v1/drift-references/"
    answer = api.post(refs, {"deployment": deployment.pk, "source": "traffic"}, format="json")
    assert answer.status_code == 400 and "window" in answer.json()
    answer = api.post(refs, {"deployment": deployment.pk, "source": "magic"}, format="json")
    assert answer.status_code == 400 and "source" in answer.json()
    assert DriftReport.objects.count() == 0


def test_api_builds_a_traffic_reference(deployment: Any, member: Any, viewer: Any) -> None:
    now = timezone.now()
    log_traffic(deployment, rows=200, drifted=False, start=now - timedelta(hours=3))
    body = {
        "deployment": deployment.pk,
        "source": "traffic",
        "start": (now - timedelta(hours=4)).isoformat(),
        "end": (now - timedelta(hours=2)).isoformat(),
    }
    assert client_for(viewer).post("/api/v1/drift-references/", body, format="json").status_code == 403
    answer = client_for(member).post("/api/v1/drift-references/", body, format="json")
    assert answer.status_code == 201, answer.json()
    assert answer.json()["n_rows"] == 200 and answer.json()["source"] == "traffic"
    references = "/api/v1/drift-references/"
    assert [row["id"] for row in client_for(viewer).get(references).json()["results"]] == [answer.json()["id"]]
    assert client_for(viewer).get(references, {"deployment": deployment.pk + 1}).json()["results"] == []
    assert client_for(viewer).get(references, {"source": "training"}).status_code == 400


def test_report_page_shows_table_and_charts(report: DriftReport, viewer: Any, member: Any, outsider: Any) -> None:
    page = browser(viewer).get(report.get_absolute_url())
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="drift-column-table"' in html
    assert html.count('data-testid="drift-histogram"') == 2
    assert 'data-testid="drift-share-chart"' in html
    assert "wasserstein" in html and "jensenshannon" in html and "vendor/plotly/plotly.min." in html
    assert "NaN" not in html and 'data-testid="drift-run"' not in html
    histogram = json.loads(page.context["histograms"][0]["figure"])
    assert [trace["type"] for trace in histogram["data"]] == ["bar", "bar"]
    assert [trace["name"] for trace in histogram["data"]] == ["reference (2000)", "current (400)"]
    share = json.loads(page.context["share_figure"])
    assert share["data"][0]["y"] == [1.0]
    assert share["layout"]["xaxis"]["type"] == "date" and len(share["layout"]["xaxis"]["range"]) == 2
    assert 'data-testid="drift-run"' in browser(member).get(report.get_absolute_url()).content.decode()
    assert browser(outsider).get(report.get_absolute_url()).status_code == 404
    listing = browser(viewer).get("/monitoring/drift/", {"drifted": "true"})
    assert listing.status_code == 200 and f"#{report.pk}" in listing.content.decode()
    assert browser(viewer).get("/monitoring/drift/", {"drifted": "maybe"}).status_code == 400
    assert f"#{report.pk}" not in browser(outsider).get("/monitoring/drift/").content.decode()
    deployment_page = browser(viewer).get(report.deployment.get_absolute_url()).content.decode()
    assert 'data-testid="deployment-drift"' in deployment_page and report.get_absolute_url() in deployment_page


def test_a_report_without_data_shows_its_reason_not_nan(
    deployment: Any, member: Any, viewer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.telemetry.models import PredictionLog

    log_traffic(deployment, rows=100, drifted=False)
    PredictionLog.objects.update(inputs=None)
    with django_capture_on_commit_callbacks(execute=True):
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    html = browser(viewer).get(report.get_absolute_url()).content.decode()
    assert "logged without inputs" in html and "not enough data" in html and "NaN" not in html


def test_page_run_by_role(
    deployment: Any, member: Any, viewer: Any, outsider: Any, django_capture_on_commit_callbacks: Any
) -> None:
    url = f"/monitoring/drift/run/{deployment.pk}/"
    assert browser(outsider).post(url, {"window": "24h"}).status_code == 404
    assert browser(viewer).post(url, {"window": "24h"}).status_code == 403
    # No traffic: back to the page it came from with the message.
    back = deployment.get_absolute_url()
    answer = browser(member).post(url, {"window": "24h"}, HTTP_REFERER=f"http://testserver{back}")
    assert answer.status_code == 302 and answer.url.endswith(back)
    assert browser(member).post(url, {"window": "5y"}).status_code == 400
    log_traffic(deployment, rows=100, drifted=False)
    with django_capture_on_commit_callbacks(execute=True):
        answer = browser(member).post(url, {"window": "24h"})
    report = DriftReport.objects.get()
    assert answer.status_code == 302 and answer.url == report.get_absolute_url()


def test_check_drift_command(deployment: Any, django_capture_on_commit_callbacks: Any) -> None:
    with pytest.raises(CommandError, match="--window: .*logged no predictions"):
        call_command("check_drift", "--deployment-id", str(deployment.pk))
    with pytest.raises(CommandError, match="--window: A window is"):
        call_command("check_drift", "--deployment-id", str(deployment.pk), "--window", "lots")
    with pytest.raises(CommandError, match="No deployment with id"):
        call_command("check_drift", "--deployment-id", "999999")
    log_traffic(deployment, rows=300, drifted=True)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("check_drift", "--deployment-id", str(deployment.pk), "--window", "2h", stdout=out)
    text = out.getvalue()
    assert "300 rows" in text and "x: wasserstein=" in text and "DATASET DRIFT: 2 of 2 columns drifted" in text
