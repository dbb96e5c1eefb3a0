"""The engine's spec of a deployment's desired state, and its Kubernetes manifests."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse

from apps.core.services import artifact_verified_path
from apps.deployments import selectors
from apps.deployments.choices import DeploymentBackendKind
from apps.deployments.models import Deployment, DeploymentTarget
from worker.deployments.spec import DeploymentSpec, VersionSpec


def ingest_url() -> str:
    # The route of telemetry's ingest API, so the servers' configured URL and the route cannot drift apart.
    return f"{settings.CONSOLE_INTERNAL_URL}{reverse('ingest-predictions')}"


def artifact_base_url() -> str:
    return f"{settings.CONSOLE_INTERNAL_URL}/api/v1/ingest/artifacts/"


def deployment_spec(deployment: Deployment, *, verify: bool = True, kubernetes: bool | None = None) -> DeploymentSpec:
    """The engine's spec of the desired state. `verify` checks every artifact's sha256 (on changes only);
    `kubernetes` (by default: the deployment's backend is Kubernetes) has pods fetch artifacts from the console."""
    if kubernetes is None:
        kubernetes = deployment.backend == DeploymentBackendKind.KUBERNETES
    live, shadow = selectors.deployment_targets(deployment)
    known = {}
    if not verify and deployment.applied_spec:
        applied = [*deployment.applied_spec.get("versions", []), deployment.applied_spec.get("shadow")]
        known = {v["sha256"]: v["artifact_path"] for v in applied if v}

    def version_spec(target: DeploymentTarget) -> VersionSpec:
        version = target.model_version
        if kubernetes:
            path = version.sha256  # fetched by the pod's init container
        else:
            path = known.get(version.sha256) or str(
                artifact_verified_path(sha256=version.sha256, project=deployment.project, obj=version)
            )
        return VersionSpec(
            version.pk, f"v{version.number}", path, version.sha256, 0 if target.shadow else target.weight
        )

    return DeploymentSpec(
        deployment_id=deployment.pk,
        name=deployment.name,
        versions=tuple(version_spec(t) for t in live),
        shadow=version_spec(shadow) if shadow else None,
        replicas=deployment.replicas,
        workers=settings.DEPLOYMENTS_SERVER_WORKERS,
        token=deployment.ingest_token(),
        console_url=ingest_url(),
        trust_pickle=settings.REGISTRY_TRUST_PICKLE,
        autoscale_min=deployment.autoscale_min if kubernetes else None,
        autoscale_max=deployment.autoscale_max if kubernetes else None,
        image=settings.DEPLOYMENTS_KUBE_IMAGE,
        namespace=settings.DEPLOYMENTS_KUBE_NAMESPACE,
        artifact_base_url=artifact_base_url() if kubernetes else "",
        labels={"mlops-console/project": deployment.project.slug},
    )


def deployment_manifests(deployment: Deployment) -> str:
    """Kubernetes manifests of the desired state as multi-document YAML, for GitOps (no Secret: the ingest
    token is created out of band). Artifacts are fetched from the console, whatever backend runs it now."""
    from apps.deployments.backends import kubernetes_options
    from worker.deployments.kube import export_yaml, render_manifests

    spec = deployment_spec(deployment, verify=False, kubernetes=True)
    return export_yaml(render_manifests(spec, kubernetes_options(), include_secret=False))
