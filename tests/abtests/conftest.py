"""A/B test fixtures: a deployment of a two-version model, and traffic logged through telemetry's ingest service
(the path the model servers' events take), routed by the model server's own sticky split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from apps.abtests import services
from apps.abtests.models import ABTest
from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.telemetry.services import IngestSource, predictions_ingest
from serving.app import TrafficSplit
from tests.factories import ModelVersionFactory, RegisteredModelFactory


@pytest.fixture
def model(project: Any) -> Any:
    return RegisteredModelFactory(project=project, name="iris")


@pytest.fixture
def v1(model: Any) -> Any:
    return ModelVersionFactory(model=model, number=1)


@pytest.fixture
def v2(model: Any) -> Any:
    return ModelVersionFactory(model=model, number=2)


@pytest.fixture
def deployment(project: Any, owner: Any, v1: Any, v2: Any) -> Deployment:
    return deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=v1)


def make_test(deployment: Deployment, actor: Any, control: Any, treatment: Any, **overrides: Any) -> ABTest:
    arguments = {
        "deployment": deployment,
        "actor": actor,
        "name": "v2 against v1",
        "control": control.pk,
        "treatments": [treatment.pk],
        "split": [50, 50],
        "primary_metric": "conversion",
        "mde": 0.05,
        "baseline": 0.3,
        "guardrails": [{"metric": "error_rate", "margin": 0.01}],
        **overrides,
    }
    return services.abtest_create(**arguments)


@pytest.fixture
def abtest(deployment: Deployment, member: Any, v1: Any, v2: Any) -> ABTest:
    return make_test(deployment, member, v1, v2)


@pytest.fixture
def running(abtest: ABTest, member: Any) -> ABTest:
    return services.abtest_start(abtest=abtest, actor=member)


def log_requests(
    deployment: Deployment,
    keys: Sequence[str],
    *,
    weights: Sequence[int] = (50, 50),
    outputs: Callable[[int, str], Any] = lambda arm, key: ["a"],
    status: Callable[[int, str], int] = lambda arm, key: 200,
    prefix: str = "r",
) -> dict[str, int]:
    """One request per key, routed as the model server routes it; returns request id -> arm index."""
    versions = [t.model_version_id for t in deployment.targets.filter(shadow=False).order_by("position")]
    split = TrafficSplit(weights)
    source = IngestSource(
        deployment_id=deployment.pk, project_id=deployment.project_id, version_ids=frozenset(versions)
    )
    events, arms = [], {}
    for index, key in enumerate(keys):
        arm = split.pick(key)
        request_id = f"{prefix}-{index}"
        arms[request_id] = arm
        code = status(arm, key)
        events.append(
            {
                "request_id": request_id,
                "deployment_id": deployment.pk,
                "version_id": versions[arm],
                "outputs": outputs(arm, key) if code < 500 else None,
                "probabilities": [[0.9, 0.1]] if code < 500 else None,
                "latency_ms": 3.0 + arm,
                "status": code,
                "request_key": key,
            }
        )
    for start in range(0, len(events), 500):
        assert predictions_ingest(source=source, events=events[start : start + 500]).rejected == []
    return arms
