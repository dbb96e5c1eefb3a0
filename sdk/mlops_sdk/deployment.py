"""Deployments, as in the seed's quick start:

    deployment = ModelDeployment(model_version="iris-classifier:2", deployment_strategy="canary", traffic_percentage=10)
    deployment.deploy()          # a new deployment serves the version; an existing one rolls it out (canary 10% …)
    status = deployment.monitor()                # a snapshot: status, phase, traffic, decisions, events
    status = deployment.monitor(follow=True)     # …or follow the rollout until it is done or rolled back

The deployment is named after the model (`iris-classifier`) unless `name=` says otherwise, the name the
console's pipelines give it too. Every change sends the generation it was based on, so a concurrent change by
someone else answers 409 (`Conflict`) instead of being overwritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops_sdk.client import Client
from mlops_sdk.errors import NotFound, Timeout
from mlops_sdk.registry import ModelRegistry
from mlops_sdk.types import Deployment, DeploymentEvent, ModelVersion

logger = logging.getLogger("mlops_sdk.deployment")

NAME_MAX_LENGTH = 40
STRATEGIES = ("direct", "blue_green", "canary", "shadow")
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_MONITOR_TIMEOUT = 1800.0
RECENT_EVENTS = 20


def default_name(model_name: str) -> str:
    """The console's default deployment name for a model (worker/deployments/spec.py)."""
    return model_name.lower().replace("_", "-")[:NAME_MAX_LENGTH]


@dataclass
class DeploymentStatus:
    """What `monitor()` reports: the deployment (status, phase, traffic, replicas), the canary analysis'
    decisions with their numbers, and the latest events."""

    deployment: Deployment
    events: list[DeploymentEvent] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.deployment.status

    @property
    def phase(self) -> str:
        return self.deployment.phase

    @property
    def traffic(self) -> list[dict[str, Any]]:
        return self.deployment.traffic

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return self.deployment.decisions

    def summary(self) -> str:
        split = ", ".join(
            f"v{entry.get('version', entry.get('model_version'))} {entry.get('weight')}%" for entry in self.traffic
        )
        last = self.decisions[-1] if self.decisions else None
        decision = f"; last decision: {last.get('action')} ({last.get('reason')})" if last else ""
        return f"{self.deployment.name}: {self.status}, phase {self.phase or '-'}, traffic {split or '-'}{decision}"


class ModelDeployment:
    """One model version on one deployment, rolled out with a strategy."""

    def __init__(
        self,
        model_version: str | int | ModelVersion,
        deployment_strategy: str = "direct",
        traffic_percentage: int | None = None,
        *,
        name: str | None = None,
        project: str | None = None,
        environment: str = "staging",
        replicas: int = 1,
        backend: str | None = None,
        steps: list[int] | None = None,
        analysis: dict[str, Any] | None = None,
        client: Client | None = None,
    ) -> None:
        if deployment_strategy not in STRATEGIES:
            raise ValueError(f"deployment_strategy: choose from {', '.join(STRATEGIES)}")
        self.client = client or Client(project=project)
        self.project = project or self.client.project
        self.registry = ModelRegistry(self.project, client=self.client)
        self.model_version = model_version
        self.strategy = deployment_strategy
        self.traffic_percentage = traffic_percentage
        self.name = name
        self.environment = environment
        self.replicas = replicas
        self.backend = backend
        self.steps = steps
        self.analysis = analysis
        self.deployment: Deployment | None = None

    def version(self) -> ModelVersion:
        if not isinstance(self.model_version, ModelVersion):
            self.model_version = self.registry.resolve(self.model_version)
        return self.model_version

    def find(self) -> Deployment | None:
        """The deployment of this name in the project, if there is one."""
        name = self.name or default_name(self.version().model_name)
        params = {"project": self.client.require_project(self.project)}
        for data in self.client.paginate("/deployments/", params):
            if data["name"] == name:
                return Deployment.from_api(data)
        return None

    def deploy(self) -> Deployment:
        """Create the deployment serving the version, or roll the version out on the existing one."""
        version = self.version()
        existing = self.find()
        if existing is None:
            body: dict[str, Any] = {
                "project": self.client.require_project(self.project),
                "name": self.name or default_name(version.model_name),
                "model_version": version.id,
                "environment": self.environment,
                "replicas": self.replicas,
            }
            if self.backend:
                body["backend"] = self.backend
            self.deployment = Deployment.from_api(self.client.post("/deployments/", body))
            return self.deployment
        body = {
            "generation": existing.generation,
            "model_version": version.id,
            "strategy": self.strategy,
            "traffic_percentage": self.traffic_percentage,
            "steps": self.steps,
        }
        if self.analysis:
            body["analysis"] = self.analysis
        self.deployment = Deployment.from_api(self.client.post(f"/deployments/{existing.id}/rollout/", body))
        return self.deployment

    def refresh(self) -> Deployment:
        current = self.deployment or self.find()
        if current is None:
            raise NotFound(404, {"detail": "This model version is not deployed yet: call deploy() first."})
        self.deployment = Deployment.from_api(self.client.get(f"/deployments/{current.id}/"))
        return self.deployment

    def events(self, limit: int = RECENT_EVENTS) -> list[DeploymentEvent]:
        """The deployment's latest events, newest first."""
        deployment = self.deployment or self.refresh()
        page = self.client.get(f"/deployments/{deployment.id}/events/", page_size=limit)
        return [DeploymentEvent.from_api(data) for data in page["results"]]

    def monitor(
        self,
        *,
        follow: bool = False,
        until: Callable[[DeploymentStatus], bool] | None = None,
        on_update: Callable[[DeploymentStatus], None] | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = DEFAULT_MONITOR_TIMEOUT,
    ) -> DeploymentStatus:
        """The deployment's live status. With `follow=True`, poll until the rollout is done or rolled back
        (or until `until(status)` is true), calling `on_update` on each change; returns the last status."""
        deadline = time.monotonic() + timeout
        seen: tuple | None = None
        while True:
            snapshot = DeploymentStatus(deployment=self.refresh(), events=self.events())
            state = (
                snapshot.deployment.generation,
                snapshot.status,
                snapshot.phase,
                len(snapshot.decisions),
                snapshot.events[0].id if snapshot.events else None,
            )
            if state != seen:
                (on_update or _log_status)(snapshot)
            seen = state
            done = until(snapshot) if until is not None else snapshot.deployment.rollout_finished
            if not follow or done:
                return snapshot
            if time.monotonic() > deadline:
                raise Timeout(f"{snapshot.summary()} — still going after {timeout:.0f} s")
            time.sleep(poll_interval)

    def _write(self, action: str, **body: Any) -> Deployment:
        deployment = self.refresh()
        data = self.client.post(
            f"/deployments/{deployment.id}/{action}/", {"generation": deployment.generation, **body}
        )
        self.deployment = Deployment.from_api(data)
        return self.deployment

    def promote(self) -> Deployment:
        """Move the rollout forward now (the next canary step, the blue-green switch)."""
        return self._write("promote")

    def rollback(self, reason: str = "") -> Deployment:
        """Back to the desired state before the last rollout."""
        return self._write("rollback", reason=reason)

    def scale(self, replicas: int) -> Deployment:
        return self._write("scale", replicas=replicas)


def _log_status(snapshot: DeploymentStatus) -> None:
    logger.info("%s", snapshot.summary())
