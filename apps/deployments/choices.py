from __future__ import annotations

from django.db import models


class DeploymentStrategy(models.TextChoices):
    """How a new version reaches traffic."""

    DIRECT = "direct", "Direct"
    BLUE_GREEN = "blue_green", "Blue-green"
    CANARY = "canary", "Canary"
    SHADOW = "shadow", "Shadow"


class DeploymentBackendKind(models.TextChoices):
    LOCAL = "local", "Local processes"
    DOCKER = "docker", "Docker"
    KUBERNETES = "kubernetes", "Kubernetes"


class DeploymentEnvironment(models.TextChoices):
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"


class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROGRESSING = "progressing", "Progressing"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    PAUSED = "paused", "Paused"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"

    @classmethod
    def colour(cls, status: str) -> str:
        return {
            "pending": "secondary",
            "progressing": "info",
            "healthy": "success",
            "degraded": "warning",
            "paused": "warning",
            "failed": "danger",
            "stopped": "dark",
        }[status]


class RolloutPhase(models.TextChoices):
    """Where the current rollout stands; `done` once its strategy has finished (or was rolled back)."""

    STARTING = "starting", "Bringing up the new version"
    SWITCHING = "switching", "Switching traffic"
    ANALYSING = "analysing", "Analysing"
    MIRRORING = "mirroring", "Mirroring"
    DONE = "done", "Done"
    ROLLED_BACK = "rolled_back", "Rolled back"


class DeploymentEventKind(models.TextChoices):
    CREATED = "created", "Created"
    ROLLOUT_STARTED = "rollout_started", "Rollout started"
    TRAFFIC_CHANGED = "traffic_changed", "Traffic changed"
    CANARY_DECISION = "canary_decision", "Canary decision"
    PROMOTED = "promoted", "Promoted"
    ROLLED_BACK = "rolled_back", "Rolled back"
    SCALED = "scaled", "Scaled"
    AUTOSCALED = "autoscaled", "Autoscaled"
    RECONCILED = "reconciled", "Applied"
    REPLICA_DIED = "replica_died", "Replica died"
    HEALTH_CHANGED = "health_changed", "Health changed"
    ERROR = "error", "Error"
    STOPPED = "stopped", "Stopped"
    STARTED = "started", "Started"

    @classmethod
    def colour(cls, kind: str) -> str:
        return {
            "rolled_back": "danger",
            "error": "danger",
            "replica_died": "warning",
            "canary_decision": "info",
            "promoted": "success",
        }.get(kind, "secondary")
