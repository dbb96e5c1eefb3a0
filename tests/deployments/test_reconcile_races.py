"""Reconciles racing with the world (issue 13, item 20): the deployment's generation changing while a reconcile
applies it, and two reconcilers meeting at an expired lease.

The backend is an object implementing the Backend protocol (worker/deployments/backend.py) whose `apply` can
be held at a gate, so the test decides what happens while a reconcile is inside it; real model servers add
nothing to these orderings (their own reload races are tests/serving/test_server_lifecycle.py's).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.deployments import services
from apps.deployments.models import Deployment
from apps.deployments.services import reconcile
from tests.factories import ModelVersionFactory, RegisteredModelFactory
from worker.deployments.spec import DeploymentSpec, ObservedState, ReplicaHealth, ReplicaState


class GatedBackend:
    """Serves what it is given; `hold` makes the next apply wait at a gate until `release`."""

    kind = "kubernetes"

    def __init__(self) -> None:
        self.serving: DeploymentSpec | None = None
        self.applied: list[tuple[dict[str, int], int]] = []
        self.inside = threading.Event()
        self.gate: threading.Event | None = None
        self.during_apply: Any = None
        self._lock = threading.Lock()

    def hold(self) -> threading.Event:
        self.inside.clear()
        self.gate = threading.Event()
        return self.gate

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        with self._lock:
            gate, self.gate = self.gate, None
            during, self.during_apply = self.during_apply, None
        if during is not None:
            during()
        if gate is not None:
            self.inside.set()
            assert gate.wait(20), "the test never released the apply"
        with self._lock:
            self.applied.append((desired.traffic(), desired.replicas))
            self.serving = desired
        return self.observe(desired.name)

    def observe(self, name: str) -> ObservedState:
        if self.serving is None:
            return ObservedState(name=name)
        replicas = tuple(
            ReplicaState(
                replica=f"{name}-{index}",
                address="127.0.0.1",
                port=8080 + index,
                health=ReplicaHealth.READY,
                traffic=self.serving.traffic(),
            )
            for index in range(self.serving.replicas)
        )
        return ObservedState(name=name, replicas=replicas)

    def scale(self, name: str, replicas: int) -> ObservedState:
        return self.observe(name)

    def delete(self, name: str) -> None:
        self.serving = None


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> GatedBackend:
    backend = GatedBackend()
    monkeypatch.setattr(reconcile, "get_backend", lambda kind: backend)
    return backend


@pytest.fixture
def versions(project: Any) -> list[Any]:
    model = RegisteredModelFactory(project=project, name="iris")
    return [ModelVersionFactory(model=model, number=n) for n in (1, 2)]


@pytest.fixture
def deployment(project: Any, owner: Any, versions: list) -> Deployment:
    # The Kubernetes kind builds its spec without reading artifacts (its pods fetch them).
    return services.deployment_create(
        project=project, name="iris", actor=owner, model_version=versions[0], backend="kubernetes"
    )


@pytest.mark.django_db
def test_a_generation_changed_during_the_apply_is_applied_in_the_same_reconcile(
    deployment: Deployment, member: Any, versions: list, backend: GatedBackend
) -> None:
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "applied"
    stable, candidate = (str(version.pk) for version in versions)

    def user_changes_it() -> None:
        # A user's change lands while the reconciler applies the generation it read.
        fresh = Deployment.objects.get(pk=deployment.pk)
        services.deployment_rollout(deployment=fresh, model_version=versions[1], strategy="direct", actor=member)
        fresh = Deployment.objects.get(pk=deployment.pk)
        services.deployment_scale(deployment=fresh, actor=member, replicas=2)

    backend.during_apply = user_changes_it
    before = Deployment.objects.get(pk=deployment.pk).generation

    assert services.deployment_reconcile(deployment_id=deployment.pk) == "applied"

    deployment.refresh_from_db()
    assert deployment.generation == before + 2
    assert backend.applied[1] == ({stable: 100}, 1), "the generation it read"
    assert backend.applied[-1] == ({candidate: 100}, 2), "then the change, in the same reconcile"
    assert deployment.applied_generation == deployment.generation, "what runs is the latest generation"
    assert deployment.applied_spec["replicas"] == 2 and deployment.status == "healthy"
    assert deployment.reconcile_lease_until is None


@pytest.mark.django_db(transaction=True)
def test_two_reconcilers_at_an_expired_lease_one_acts_and_the_first_cannot_release_the_seconds_claim(
    deployment: Deployment, backend: GatedBackend
) -> None:
    """A reconciler that outlived its lease (a stuck apply) must not clear the claim of the one that took over:
    a third would then act beside the second."""
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            outcomes[name] = services.deployment_reconcile(deployment_id=deployment.pk)
        finally:
            connection.close()

    gate_first = backend.hold()
    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert backend.inside.wait(10)
    # The first is stuck past its lease: it expires, and a second reconciler takes the deployment over.
    Deployment.objects.filter(pk=deployment.pk).update(reconcile_lease_until=timezone.now() - timedelta(seconds=1))
    gate_second = backend.hold()
    second = threading.Thread(target=run, args=("second",))
    second.start()
    assert backend.inside.wait(10)
    # Two more at once while the second holds the lease: both are turned away.
    racers = [threading.Thread(target=run, args=(f"racer-{index}",)) for index in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(10)
    assert outcomes["racer-0"] == outcomes["racer-1"] == "busy"

    gate_first.set()
    first.join(10)
    assert outcomes["first"] == "busy", "it lost its lease: it stops instead of recording over the second"
    lease = Deployment.objects.get(pk=deployment.pk).reconcile_lease_until
    assert lease is not None and lease > timezone.now(), "the second's claim is still in place"
    run("third")
    assert outcomes["third"] == "busy"

    gate_second.set()
    second.join(10)
    assert outcomes["second"] == "applied"
    assert len(backend.applied) == 2
    assert Deployment.objects.get(pk=deployment.pk).reconcile_lease_until is None
