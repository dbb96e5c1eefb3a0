"""Monitoring fixtures: a deployment whose version was trained on a dataset version, and traffic logged through
telemetry's ingest service (so inputs are stored by column, as the model servers send them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.factories import ModelVersionFactory, RegisteredModelFactory

SIGNATURE = {
    "inputs": [{"name": "x", "type": "number"}, {"name": "colour", "type": "string"}],
    "outputs": {"type": "classes", "classes": ["a", "b"]},
}
ROWS_PER_EVENT = 20


def training_csv(n: int = 2_000, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    colours = rng.choice(["red", "green", "blue"], n)
    return b"x,colour,label\n" + "".join(f"{a:.6f},{c},a\n" for a, c in zip(x, colours, strict=True)).encode()


@pytest.fixture
def training_version(dataset: Any, make_dataset_version: Any) -> Any:
    return make_dataset_version(dataset, training_csv())


@pytest.fixture
def deployment(project: Any, owner: Any, training_version: Any) -> Deployment:
    model = RegisteredModelFactory(project=project, name="iris")
    version = ModelVersionFactory(model=model, number=1, signature=SIGNATURE, dataset_version=training_version)
    return deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)


def log_traffic(
    deployment: Deployment, *, rows: int, drifted: bool, start: datetime | None = None, seed: int = 2
) -> datetime:
    """Log `rows` input rows in events of ROWS_PER_EVENT, spread over the minutes after `start` (default an
    hour ago); drifted traffic moves `x` by two standard deviations and turns every colour red."""
    rng = np.random.default_rng(seed)
    start = start or timezone.now() - timedelta(hours=1)
    version_id = deployment.targets.get().model_version_id
    events = []
    for index in range(rows // ROWS_PER_EVENT):
        x = rng.normal(2 if drifted else 0, 1, ROWS_PER_EVENT)
        colours = ["red"] * ROWS_PER_EVENT if drifted else rng.choice(["red", "green", "blue"], ROWS_PER_EVENT).tolist()
        events.append(
            {
                "request_id": f"{start.timestamp()}-{index}",
                "deployment_id": deployment.pk,
                "version_id": version_id,
                "inputs": {"x": x.tolist(), "colour": colours},
                "outputs": ["a"] * ROWS_PER_EVENT,
                "latency_ms": 2.0,
                "status": 200,
                "timestamp": (start + timedelta(seconds=index)).isoformat(),
            }
        )
    source = IngestSource(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        version_ids=frozenset(deployment.registered_model.versions.values_list("pk", flat=True)),
    )
    for offset in range(0, len(events), 500):
        assert predictions_ingest(source=source, events=events[offset : offset + 500]).rejected == []
    return start
