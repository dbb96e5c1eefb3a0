"""A model server's shipper against the real console: events the console refuses one by one (its answer's
`rejected` list) are counted as drops with a reason in the server's /metrics, not as shipped."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apps.deployments import services as deployment_services
from apps.telemetry.models import PredictionLog
from serving.app import new_request_id
from serving.events import EventShipper, event
from serving.metrics import Metrics, _merge, render
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db(transaction=True)


def make_event(request_id: str, version_id: Any) -> tuple[tuple, int]:
    return (
        event(
            request_id=request_id,
            event_id=new_request_id(),
            version_id=version_id,
            inputs={"x": [1.0]},
            outputs=["a"],
            probabilities=None,
            latency_ms=1.0,
            status=200,
            error=None,
            request_key=None,
            shadow=False,
            pinned=False,
            timestamp=time.time(),
        ),
        600,
    )


def counters(metrics: Metrics, name: str) -> dict[str, float]:
    return {
        dict(labels).get("reason", ""): value
        for metric, labels, value in metrics.snapshot()["values"]
        if metric == name
    }


def test_events_the_console_rejects_are_counted_as_drops_with_their_field(
    live_server: Any, project: Any, owner: Any
) -> None:
    model = RegisteredModelFactory(project=project, name="iris")
    version = ModelVersionFactory(model=model, number=1)
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)
    metrics = Metrics()
    shipper = EventShipper(
        url=f"{live_server.url}/api/v1/ingest/predictions/",
        token=deployment.ingest_token(),
        deployment_id=deployment.pk,
        metrics=metrics,
        buffer_size=100,
        buffer_bytes=1 << 20,
        max_post_bytes=1 << 20,
        batch_size=10,
        flush_interval=0.1,
    )
    try:
        for index in range(3):
            shipper.record(*make_event(f"good-{index}", version.pk))
        shipper.record(*make_event("foreign-1", 999_999))  # not a version of this deployment's model
        shipper.record(*make_event("foreign-2", 999_998))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(counters(metrics, "model_server_events_dropped_total").values()) < 2:
            time.sleep(0.1)
    finally:
        shipper.close()
    assert counters(metrics, "model_server_events_dropped_total") == {"rejected_version_id": 2}
    assert counters(metrics, "model_server_events_shipped_total") == {"": 3}, "only what the console stored"
    assert sorted(PredictionLog.objects.values_list("request_id", flat=True)) == ["good-0", "good-1", "good-2"]
    exposition = render(*_merge([(metrics.snapshot(), True)]))
    assert 'model_server_events_dropped_total{reason="rejected_version_id"} 2' in exposition
