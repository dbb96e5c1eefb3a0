"""Who steers telemetry (issue 13, item 3): canary analysis counts only the traffic the model server routed, and
events are de-duplicated on the server's own event id, not on the request id a caller chose."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.deployments.services import reconcile
from apps.telemetry import selectors
from apps.telemetry.models import PredictionLog, PredictionRollup
from apps.telemetry.services import IngestSource, prediction_labels_store, predictions_ingest
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(project: Any) -> list[Any]:
    model = RegisteredModelFactory(project=project, name="iris")
    return [ModelVersionFactory(model=model, number=n) for n in (1, 2)]


@pytest.fixture
def deployment(project: Any, owner: Any, versions: list) -> Deployment:
    return deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=versions[0])


def source(deployment: Deployment, versions: list) -> IngestSource:
    return IngestSource(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        version_ids=frozenset(version.pk for version in versions),
    )


def events(deployment: Deployment, version: Any, count: int, *, failed: int = 0, **fields: Any) -> list[dict]:
    at = (timezone.now() - timedelta(seconds=20)).isoformat()
    tag = f"{version.pk}-{fields.get('pinned', False)}"
    return [
        {
            "request_id": f"{tag}-{index}",
            "event_id": f"{tag}-e{index}",
            "deployment_id": deployment.pk,
            "version_id": version.pk,
            "status": 500 if index < failed else 200,
            "latency_ms": 2.0,
            "outputs": ["setosa"],
            "probabilities": [[0.9, 0.1]],
            "timestamp": at,
            **fields,
        }
        for index in range(count)
    ]


def test_a_pinned_client_cannot_inflate_the_stable_versions_error_rate(
    deployment: Deployment, member: Any, versions: list
) -> None:
    stable, canary = versions
    deployment_services.deployment_rollout(deployment=deployment, model_version=canary, strategy="canary", actor=member)
    deployment.refresh_from_db()
    state = {
        **deployment.strategy_state,
        "window_started_at": (timezone.now() - timedelta(seconds=deployment.strategy_state["window_seconds"] + 30))
        .replace(second=0)
        .isoformat(),
    }
    Deployment.objects.filter(pk=deployment.pk).update(strategy_state=state)
    # Routed traffic: the canary fails 10 % of its requests, the stable version none.
    routed = events(deployment, stable, 100) + events(deployment, canary, 100, failed=10)
    # A client that names the stable version in the URL and sends requests it knows fail.
    pinned = events(deployment, stable, 100, failed=100, pinned=True)
    assert predictions_ingest(source=source(deployment, versions), events=routed + pinned).accepted == 300

    deployment.refresh_from_db()
    reconcile._canary_analyse(deployment, dict(deployment.strategy_state))
    deployment.refresh_from_db()
    [decision] = deployment.strategy_state["decisions"]
    assert decision["numbers"]["stable"]["requests"] == 100 and decision["numbers"]["stable_error_rate"] == 0
    assert decision["action"] == "hold" and "error rate 10.00%" in decision["reason"], decision
    # The pinned requests are still logged and rolled up (the deployment served them), apart from routed ones.
    assert PredictionLog.objects.filter(pinned=True).count() == 100
    assert PredictionRollup.objects.get(model_version_id=stable.pk, pinned=True).errors == 100
    with_pinned = selectors.version_window_stats(
        deployment_id=deployment.pk,
        version_ids=[stable.pk],
        since=timezone.now() - timedelta(minutes=5),
        until=timezone.now(),
        with_pinned=True,
    )
    assert (with_pinned[stable.pk].requests, with_pinned[stable.pk].errors) == (200, 100)


def test_a_reused_client_request_id_no_longer_hides_later_events(
    deployment: Deployment, member: Any, project: Any, versions: list
) -> None:
    stable = versions[0]
    first, second = (
        {**event, "request_id": "order-1", "event_id": event_id}
        for event, event_id in zip(events(deployment, stable, 2), ("e-1", "e-2"), strict=True)
    )
    second["outputs"] = ["virginica"]
    assert predictions_ingest(source=source(deployment, versions), events=[first]).accepted == 1
    assert predictions_ingest(source=source(deployment, versions), events=[second]).accepted == 1, "not hidden"
    # A re-sent batch (the same server events again) is still stored once.
    assert predictions_ingest(source=source(deployment, versions), events=[first, second]).accepted == 0
    assert PredictionLog.objects.filter(request_id="order-1").count() == 2
    assert PredictionRollup.objects.get().requests == 2
    # Feedback still joins on the request id the server answered: the latest prediction that carried it.
    result = prediction_labels_store(actor=member, project=project, items=[{"request_id": "order-1", "label": "x"}])
    assert (result.stored, result.errors, result.unknown) == (1, [], 0)


def test_a_shadow_answer_pairs_with_its_own_request_when_an_id_repeats(deployment: Deployment, versions: list) -> None:
    stable, shadow = versions
    base = events(deployment, stable, 1)[0]
    batch = [
        {**base, "request_id": "same", "event_id": "e-1", "outputs": [1]},
        {**base, "request_id": "same", "event_id": "e-2", "outputs": [2]},
        {**base, "request_id": "same", "event_id": "e-1", "outputs": [10], "shadow": True, "version_id": shadow.pk},
        {**base, "request_id": "same", "event_id": "e-2", "outputs": [20], "shadow": True, "version_id": shadow.pk},
    ]
    assert predictions_ingest(source=source(deployment, versions), events=batch).accepted == 4
    pairs = selectors.shadow_pairs(deployment_id=deployment.pk, shadow_version_id=shadow.pk)
    assert sorted(pairs) == [([1], [10]), ([2], [20])]
