"""Alerts fixtures: deployments with per-minute rollups written as telemetry's ingest writes them, channels
pointing at the real sinks of tests/core/notifications (a local HTTP server and aiosmtpd)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.alerts import services
from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, PredictionRollup
from apps.telemetry.selectors import minute_floor
from tests.core.notifications.sinks import HookServer, running_server, running_smtp
from tests.factories import ModelVersionFactory, RegisteredModelFactory

SIGNATURE = {"inputs": [{"name": "x", "type": "number"}], "outputs": {"type": "classes", "classes": ["a", "b"]}}


@pytest.fixture(autouse=True)
def private_addresses_allowed(settings: Any) -> None:
    """The sinks listen on 127.0.0.1; the SSRF check has its own tests (which turn this off)."""
    settings.WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def smtp_sink(settings: Any) -> Iterator[list]:
    with running_smtp(settings) as received:
        yield received


def make_deployment(project: Any, owner: Any, name: str, model: Any = None, accuracy: float = 0.9) -> Deployment:
    model = model or RegisteredModelFactory(project=project, name=name)
    number = model.versions.count() + 1
    version = ModelVersionFactory(model=model, number=number, signature=SIGNATURE, metrics={"accuracy": accuracy})
    return deployment_services.deployment_create(project=project, name=name, actor=owner, model_version=version)


@pytest.fixture
def deployment(project: Any, owner: Any) -> Deployment:
    return make_deployment(project, owner, "iris")


def latency_buckets(latency_ms: float, count: int) -> dict[str, int]:
    index = next((i for i, bound in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= bound), len(LATENCY_BUCKETS_MS))
    return {BUCKET_FIELDS[index]: count}


def write_minutes(
    deployment: Deployment,
    *,
    minutes: int,
    requests: int = 100,
    errors: int = 0,
    latency_ms: float = 20.0,
    end: datetime | None = None,
) -> None:
    """`minutes` whole minutes of live traffic ending at `end` (default: the current minute, included)."""
    end = minute_floor(end or timezone.now())
    version_id = deployment.targets.get().model_version_id
    PredictionRollup.objects.bulk_create(
        [
            PredictionRollup(
                deployment_id=deployment.pk,
                project_id=deployment.project_id,
                model_version_id=version_id,
                minute=end - timedelta(minutes=offset),
                requests=requests,
                errors=errors,
                latency_count=requests,
                latency_sum_ms=latency_ms * requests,
                **latency_buckets(latency_ms, requests),
            )
            for offset in range(minutes)
        ],
        update_conflicts=True,
        unique_fields=["deployment_id", "model_version_id", "shadow", "pinned", "minute"],
        update_fields=["requests", "errors", "latency_count", "latency_sum_ms", *BUCKET_FIELDS],
    )


@pytest.fixture
def webhook_channel(project: Any, owner: Any, hook_server: HookServer) -> Any:
    return services.alert_channel_create(
        project=project,
        actor=owner,
        name="ops hook",
        kind="webhook",
        config={"url": hook_server.url("/ok"), "secret": "a-long-enough-secret"},
    )
