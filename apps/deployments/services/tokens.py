"""Look-ups for the model servers' calls: the artifacts a deployment may fetch."""

from __future__ import annotations

from apps.deployments.models import DeploymentTarget
from apps.registry.models import ModelVersion


def deployment_artifact_allowed(*, deployment_id: int, sha256: str) -> ModelVersion | None:
    """The version with this artifact, when the deployment serves it (a pod's init container fetches it)."""
    target = (
        DeploymentTarget.objects.filter(deployment_id=deployment_id, model_version__sha256=sha256)
        .select_related("model_version")
        .first()
    )
    return target.model_version if target else None
