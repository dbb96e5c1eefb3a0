"""Model servers send a shipping report (drops by reason, buffer depth) with every batch of events."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apps.deployments import services as deployment_services
from apps.telemetry import services
from apps.telemetry.models import ServerShippingReport
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/ingest/predictions/"


@pytest.fixture
def token(project: Any, owner: Any) -> dict[str, str]:
    version = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="iris"), number=1)
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)
    return {"HTTP_AUTHORIZATION": f"Bearer {deployment.ingest_token()}"}


def test_a_report_is_stored_at_most_once_per_interval_unless_its_drops_change(
    api: Any, token: dict[str, str], django_assert_max_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def report(dropped: dict, buffered: int) -> None:
        body = {"events": [], "server": "host:1", "dropped": dropped, "buffered": buffered}
        assert api.post(URL, body, format="json", **token).status_code == 202

    report({"buffer_full": 1}, 5)
    first = ServerShippingReport.objects.get()
    with django_assert_max_num_queries(0):
        report({"buffer_full": 1}, 7)  # same drops, within the interval: the stored report stands
    assert ServerShippingReport.objects.get().buffered == 5
    report({"buffer_full": 2}, 9)  # new drops are stored at once
    assert ServerShippingReport.objects.get().dropped == {"buffer_full": 2}
    later = time.monotonic() + services.SHIPPING_REPORT_INTERVAL_SECONDS + 1
    monkeypatch.setattr(services.time, "monotonic", lambda: later)
    report({"buffer_full": 2}, 0)
    stored = ServerShippingReport.objects.get()
    assert stored.buffered == 0 and stored.reported_at > first.reported_at


def test_the_memory_of_written_reports_stays_bounded(
    api: Any, token: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each restarted server process reports under a new name; the web process does not keep them all."""
    monkeypatch.setattr(services, "REPORTS_REMEMBERED", 3)
    for pid in range(10):
        body = {"events": [], "server": f"host:{pid}", "dropped": {}, "buffered": 0}
        assert api.post(URL, body, format="json", **token).status_code == 202
    assert len(services._reports_written) <= 3
    assert ServerShippingReport.objects.count() == 10
