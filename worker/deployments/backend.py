"""The one interface every deployment backend (local processes, Docker, Kubernetes) implements."""

from __future__ import annotations

from typing import Protocol

from worker.deployments.spec import DeploymentSpec, ObservedState


class Backend(Protocol):
    """Make the world match a deployment spec and report what runs.

    Every method is idempotent: the reconciler calls `apply` on every tick, so applying an unchanged spec
    to a healthy deployment must change nothing, and applying it after a crash must repair what is broken.
    """

    kind: str

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        """Start, replace, reload or stop model servers until they serve `desired`; return what runs."""
        ...

    def observe(self, name: str) -> ObservedState:
        """What runs for deployment `name` now, without changing anything."""
        ...

    def scale(self, name: str, replicas: int) -> ObservedState:
        """Change only the number of replicas of the last applied spec."""
        ...

    def delete(self, name: str) -> None:
        """Stop every model server of `name` and forget it."""
        ...
