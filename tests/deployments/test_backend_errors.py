"""What the console does with the backend's failures: a rollout the backend cannot apply is rolled back, and a
crash-looping replica is shown as such.

The backend here is an object implementing the Backend protocol (worker/deployments/backend.py) that refuses
specs serving one version, the way the local backend refuses a reload whose model cannot load; that refusal
itself, with real model servers, is tests/worker/test_deploy_local.py::
test_a_spec_that_cannot_load_is_refused_and_the_old_one_keeps_serving.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from apps.deployments import services
from apps.deployments.choices import DeploymentEventKind, RolloutPhase
from apps.deployments.models import Deployment
from apps.deployments.services import reconcile
from tests.factories import ModelVersionFactory, RegisteredModelFactory
from worker.deployments.spec import BackendError, DeploymentSpec, ObservedState, ReplicaHealth, ReplicaState

pytestmark = pytest.mark.django_db


class RefusingBackend:
    """Serves every spec except one giving traffic to `refused_version`, which it refuses with a BackendError."""

    kind = "kubernetes"

    def __init__(self, refused_version: int) -> None:
        self.refused = str(refused_version)
        self.serving: DeploymentSpec | None = None
        self.applied: list[dict[str, int]] = []

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        self.applied.append(desired.traffic())
        if desired.traffic().get(self.refused):
            raise BackendError("replica 0 refused the new spec: version 2 cannot load (bad pickle); kept serving")
        self.serving = desired
        return self.observe(desired.name)

    def observe(self, name: str) -> ObservedState:
        if self.serving is None:
            return ObservedState(name=name)
        replica = ReplicaState(
            replica=f"{name}-0",
            address="127.0.0.1",
            port=8080,
            health=ReplicaHealth.READY,
            traffic=self.serving.traffic(),
        )
        return ObservedState(name=name, replicas=(replica,))

    def scale(self, name: str, replicas: int) -> ObservedState:
        return self.observe(name)

    def delete(self, name: str) -> None:
        self.serving = None


@pytest.fixture
def versions(project: Any) -> list[Any]:
    model = RegisteredModelFactory(project=project, name="iris")
    return [ModelVersionFactory(model=model, number=n) for n in (1, 2)]


@pytest.fixture
def deployment(project: Any, owner: Any, versions: list) -> Deployment:
    # The Kubernetes kind builds its spec without reading artifacts (its pods fetch them), so the factory's
    # versions need no files; the engine is the object above.
    return services.deployment_create(
        project=project, name="iris", actor=owner, model_version=versions[0], backend="kubernetes"
    )


def test_a_canary_the_backend_cannot_load_is_rolled_back_with_a_decision_saying_why(
    deployment: Deployment, member: Any, versions: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    stable, candidate = (str(v.pk) for v in versions)
    backend = RefusingBackend(refused_version=versions[1].pk)
    monkeypatch.setattr(reconcile, "get_backend", lambda kind: backend)
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "applied"
    services.deployment_rollout(deployment=deployment, model_version=versions[1], strategy="canary", actor=member)

    outcome = services.deployment_reconcile(deployment_id=deployment.pk)

    assert backend.applied == [{stable: 100}, {stable: 90, candidate: 10}, {stable: 100}]
    assert outcome == "applied", "the restored state was applied in the same reconcile"
    deployment.refresh_from_db()
    assert deployment.phase == RolloutPhase.ROLLED_BACK and deployment.status == "healthy"
    assert deployment.applied_generation == deployment.generation
    decision = deployment.strategy_state["decisions"][-1]
    assert decision["action"] == "rollback" and "version 2 cannot load" in decision["reason"]
    assert decision["percent"] == 10
    event = deployment.events.filter(kind=DeploymentEventKind.CANARY_DECISION).get()
    assert "rollback — the backend could not apply the rollout: replica 0 refused" in event.message
    rolled_back = deployment.events.get(kind=DeploymentEventKind.ROLLED_BACK)
    assert "version 2 cannot load" in rolled_back.message and rolled_back.data["error"].startswith("replica 0")
    # Nothing is retried: the next reconcile applies only the stable version.
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "applied"
    assert backend.applied[-1] == {stable: 100}


def test_a_backend_error_outside_a_rollout_is_the_status_and_nothing_is_rolled_back(
    deployment: Deployment, versions: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RefusingBackend(refused_version=versions[0].pk)
    monkeypatch.setattr(reconcile, "get_backend", lambda kind: backend)
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "cannot load" in deployment.status_message
    assert not deployment.events.filter(kind=DeploymentEventKind.ROLLED_BACK).exists()


class CrashLoopingBackend(RefusingBackend):
    """Replica 0 keeps dying: dead, in a crash loop, its restart deferred (as the local backend reports it)."""

    def __init__(self, next_restart_at: float) -> None:
        super().__init__(refused_version=0)
        self.next_restart_at = next_restart_at

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        raise BackendError("replica 0 is in a crash loop (3 restarts); next at 12:00:00")

    def observe(self, name: str) -> ObservedState:
        replica = ReplicaState(
            replica=f"{name}-0",
            address="127.0.0.1",
            port=8080,
            health=ReplicaHealth.DEAD,
            pid=4242,
            restarts=3,
            crash_loop=True,
            next_restart_at=self.next_restart_at,
        )
        return ObservedState(name=name, replicas=(replica,))


def test_a_dead_replica_in_a_crash_loop_is_one_event_saying_when_it_restarts(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    monkeypatch.setattr(reconcile, "get_backend", lambda kind: CrashLoopingBackend(next_restart_at=at))
    for _ in range(3):  # the replica stays dead while its restart waits: one death, one event
        assert services.deployment_reconcile(deployment_id=deployment.pk) == "failed"
    died = deployment.events.filter(kind=DeploymentEventKind.REPLICA_DIED).get()
    assert died.message == (
        "Replica iris-0 (pid 4242) had stopped; crash loop (3 restarts): restart deferred until 03:04:05 UTC."
    )
    assert died.data["crash_loop"] is True and died.data["restarts"] == 3


def crash_looping(deployment: Deployment, *, restarts: int, crash_loop: bool, wait: float) -> None:
    """What the local backend reports for a replica that keeps dying (see worker/deployments/local.py)."""
    replicas = [
        {
            "replica": f"{deployment.name}-0",
            "url": "http://127.0.0.1:5001",
            "health": "dead" if crash_loop else "ready",
            "pid": None,
            "traffic": {},
            "restarts": restarts,
            "crash_loop": crash_loop,
            "next_restart_at": time.time() + wait if crash_loop else None,
        }
    ]
    Deployment.objects.filter(pk=deployment.pk).update(observed={"endpoint": "", "replicas": replicas})


def test_the_page_shows_a_crash_loop_with_its_restarts_and_the_next_restart(
    deployment: Deployment, viewer: Any
) -> None:
    browser = Client()
    browser.force_login(viewer)
    crash_looping(deployment, restarts=4, crash_loop=True, wait=80.4)
    page = browser.get(deployment.get_absolute_url()).content.decode()
    assert re.search(r"crash loop — 4 restarts, next restart in (80|79)s", page), "79: a slow second passed"
    crash_looping(deployment, restarts=2, crash_loop=False, wait=0)
    page = browser.get(deployment.get_absolute_url()).content.decode()
    assert "crash loop" not in page and "2 restarts" in page
    crash_looping(deployment, restarts=0, crash_loop=False, wait=0)
    assert "restarts" not in browser.get(deployment.get_absolute_url()).content.decode()
