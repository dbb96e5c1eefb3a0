"""Ways around the production gate that must stay closed (the Django admin, the shadow version), and the demo
command next to a busy worker."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from apps.deployments import selectors, services
from apps.deployments.models import Deployment, DeploymentTarget
from apps.registry.choices import PromotionRequestStatus
from apps.registry.models import ModelAlias, PromotionRequest
from tests.conftest import client_for
from tests.factories import ModelVersionFactory, RegisteredModelFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(project: Any) -> list[Any]:
    model = RegisteredModelFactory(project=project, name="iris")
    return [ModelVersionFactory(model=model, number=n) for n in (1, 2)]


def approve_for_production(version: Any, user: Any) -> None:
    PromotionRequest.objects.create(
        model=version.model,
        version=version,
        target_stage="production",
        transition="stage:production",
        status=PromotionRequestStatus.APPROVED,
        requested_by=user,
        expires_at=timezone.now(),
    )


@pytest.fixture
def production(project: Any, owner: Any, versions: list) -> Deployment:
    """A production deployment serving the approved version 1; version 2 has no approval."""
    approve_for_production(versions[0], owner)
    return services.deployment_create(
        project=project, name="iris", actor=owner, model_version=versions[0], environment="production"
    )


def desired_state(deployment: Deployment) -> tuple:
    deployment.refresh_from_db()
    targets = list(DeploymentTarget.objects.filter(deployment=deployment).values_list("model_version", "weight"))
    return deployment.environment, deployment.replicas, deployment.generation, targets


def test_a_superuser_cannot_put_an_unapproved_version_into_production_through_the_admin(
    production: Deployment, versions: list
) -> None:
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    target = DeploymentTarget.objects.get(deployment=production)
    before = desired_state(production)
    change = {
        "name": production.name,
        "project": production.project_id,
        "registered_model": production.registered_model_id,
        "environment": "production",
        "backend": production.backend,
        "strategy": production.strategy,
        "phase": production.phase,
        "status": production.status,
        "status_message": "",
        "replicas": 5,
        "strategy_state": "{}",
        "observed": "{}",
        "generation": production.generation,
        "targets-TOTAL_FORMS": "1",
        "targets-INITIAL_FORMS": "1",
        "targets-MIN_NUM_FORMS": "0",
        "targets-MAX_NUM_FORMS": "1000",
        "targets-0-id": target.pk,
        "targets-0-deployment": production.pk,
        "targets-0-model_version": versions[1].pk,
        "targets-0-weight": 100,
        "targets-0-position": 0,
        "_save": "Save",
    }
    response = client.post(f"/admin/deployments/deployment/{production.pk}/change/", change)
    assert response.status_code == 403
    assert desired_state(production) == before, "the admin changed what serves"
    added = client.post("/admin/deployments/deployment/add/", {**change, "name": "iris-2", "targets-0-id": ""})
    assert added.status_code == 403 and not Deployment.objects.filter(name="iris-2").exists()
    deleted = client.post(f"/admin/deployments/deployment/{production.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403 and Deployment.objects.filter(pk=production.pk).exists()
    # The page still shows the deployment, with its targets, read-only.
    page = client.get(f"/admin/deployments/deployment/{production.pk}/change/")
    assert page.status_code == 200 and 'name="targets-0-model_version"' not in page.content.decode()


def test_the_admin_cannot_delete_what_decides_stages_or_aliases(production: Deployment, versions: list) -> None:
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    alias = ModelAlias.objects.create(model=versions[0].model, name="champion", version=versions[0])
    request = PromotionRequest.objects.get(version=versions[0])
    for url, pk in (("registry/modelalias", alias.pk), ("registry/promotionrequest", request.pk)):
        assert client.post(f"/admin/{url}/{pk}/delete/", {"post": "yes"}).status_code == 403, url
    assert ModelAlias.objects.filter(pk=alias.pk).exists() and PromotionRequest.objects.filter(pk=request.pk).exists()


def test_the_shadow_of_a_production_deployment_passes_the_production_gate(
    production: Deployment, versions: list, member: Any
) -> None:
    before = desired_state(production)
    url = f"/api/v1/deployments/{production.pk}/traffic/"
    body = {
        "generation": production.generation,
        "traffic": [{"model_version": versions[0].pk, "weight": 100}],
        "shadow_model_version": versions[1].pk,
    }
    refused = client_for(member).post(url, body, format="json")
    assert refused.status_code == 403, refused.json()
    assert "Request a promotion to production" in str(refused.json()["shadow_model_version"])
    assert desired_state(production) == before
    assert selectors.deployment_targets(production)[1] is None, "no shadow was set"
    approve_for_production(versions[1], member)
    accepted = client_for(member).post(url, body, format="json")
    assert accepted.status_code == 200, accepted.json()
    assert selectors.deployment_targets(production)[1].model_version_id == versions[1].pk


def test_the_demo_command_waits_a_bounded_time_for_a_reconcile_in_progress(project: Any, versions: list) -> None:
    project.slug = "demo"
    project.save()
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    deployment = services.deployment_create(project=project, name="iris", actor=admin, model_version=versions[0])
    # A worker holds the reconcile lease (and never lets go within the wait).
    Deployment.objects.filter(pk=deployment.pk).update(reconcile_lease_until=timezone.now() + timedelta(minutes=5))
    started = time.monotonic()
    with pytest.raises(CommandError, match="A worker is still reconciling deployment iris after 1 s"):
        call_command("load_demo_deployment", "--wait-seconds", "1")
    assert time.monotonic() - started >= 1
