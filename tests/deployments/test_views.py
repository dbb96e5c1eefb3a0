"""The deployment pages as owner, editor, viewer and outsider."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.deployments import services
from apps.deployments.models import Deployment
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(project: Any, owner: Any) -> Deployment:
    model = RegisteredModelFactory(project=project, name="iris")
    versions = [ModelVersionFactory(model=model, number=n) for n in (1, 2)]
    deployment = services.deployment_create(project=project, name="iris", actor=owner, model_version=versions[0])
    services.deployment_rollout(
        deployment=deployment, model_version=versions[1], strategy="canary", actor=owner, traffic_percentage=10
    )
    deployment.refresh_from_db()
    deployment.strategy_state["decisions"] = [
        {
            "percent": 10,
            "action": "hold",
            "reason": "error rate 20.00% vs stable 0.00%",
            "numbers": {
                "stable": {"requests": 90, "errors": 0, "p99_ms": 2.0},
                "canary": {"requests": 10, "errors": 2, "p99_ms": 3.0},
            },
        }
    ]
    deployment.save()
    return deployment


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def list_queries(user: Any) -> int:
    client = browser(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("deployments:deployment-list")).status_code == 200
    return len(queries)


def test_list_queries_do_not_grow_with_deployments(deployment: Deployment, owner: Any, viewer: Any) -> None:
    one = list_queries(viewer)
    for name in ("iris-b", "iris-c"):
        version = deployment.registered_model.versions.first()
        services.deployment_create(project=deployment.project, name=name, actor=owner, model_version=version)
    assert list_queries(viewer) == one


def test_list_and_detail_by_role(deployment: Deployment, owner: Any, viewer: Any, outsider: Any) -> None:
    listing = browser(viewer).get(reverse("deployments:deployment-list"))
    assert listing.status_code == 200 and b"iris" in listing.content
    assert b"iris" not in browser(outsider).get(reverse("deployments:deployment-list")).content
    detail = browser(viewer).get(deployment.get_absolute_url())
    assert detail.status_code == 200
    page = detail.content.decode()
    assert 'data-testid="canary-decisions"' in page and "error rate 20.00%" in page
    assert "/static/vendor/plotly/plotly.min." in page and "cdn" not in page.lower()
    assert 'data-testid="promote"' not in page, "viewers see no buttons"
    assert 'data-testid="promote"' in browser(owner).get(deployment.get_absolute_url()).content.decode()
    assert browser(outsider).get(deployment.get_absolute_url()).status_code == 404


def test_actions_by_role(deployment: Deployment, member: Any, viewer: Any, outsider: Any) -> None:
    url = reverse("deployments:deployment-scale", args=[deployment.pk])
    data = {"generation": deployment.generation, "replicas": 3}
    assert browser(viewer).post(url, data).status_code == 403
    assert browser(outsider).post(url, data).status_code == 404
    assert browser(member).post(url, data).status_code == 302
    deployment.refresh_from_db()
    assert deployment.replicas == 3
    stale = browser(member).post(url, {"generation": 1, "replicas": 2}, follow=True)
    assert "changed" in stale.content.decode()
    promote = reverse("deployments:deployment-promote", args=[deployment.pk])
    assert browser(member).post(promote, {"generation": deployment.generation}).status_code == 302
    deployment.refresh_from_db()
    assert deployment.strategy_state["step"] == 1
    rollback = reverse("deployments:deployment-rollback", args=[deployment.pk])
    browser(member).post(rollback, {"generation": deployment.generation})
    deployment.refresh_from_db()
    assert deployment.phase == "rolled_back"


def test_try_it_without_a_ready_replica_and_manifests(deployment: Deployment, viewer: Any) -> None:
    response = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]), {"body": "{}", "protocol": "mlflow"}
    )
    assert response.status_code == 409 and "No replica is ready" in response.content.decode()
    bad = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]), {"body": "{", "protocol": "v2"}
    )
    assert bad.status_code == 400
    manifests = browser(viewer).get(reverse("deployments:deployment-manifests", args=[deployment.pk]))
    assert manifests.status_code == 200 and b"kind: Deployment" in manifests.content
