"""Which engine runs a deployment: the backends of worker/deployments, configured from settings."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings

from worker.deployments.backend import Backend
from worker.deployments.kube import KubernetesOptions
from worker.deployments.spec import BackendError


@cache
def _local(state_dir: str) -> Backend:
    from worker.deployments.local import LocalProcessBackend

    return LocalProcessBackend(state_dir=state_dir)


def _docker() -> Backend:
    import docker

    from worker.deployments.docker_backend import DockerBackend

    try:
        client = (
            docker.DockerClient(base_url=settings.DEPLOYMENTS_DOCKER_URL, timeout=600)
            if settings.DEPLOYMENTS_DOCKER_URL
            else docker.from_env(timeout=600)
        )
    except docker.errors.DockerException as exc:
        where = settings.DEPLOYMENTS_DOCKER_URL or "DOCKER_HOST, else /var/run/docker.sock"
        raise BackendError(
            f"the Docker engine cannot be reached at {where} (set DEPLOYMENTS_DOCKER_URL, or start dockerd): {exc}"
        ) from exc
    return DockerBackend(
        client,
        work_dir=settings.DEPLOYMENTS_STATE_DIR / "docker",
        base_image=settings.DEPLOYMENTS_DOCKER_BASE_IMAGE,
    )


def kubernetes_options() -> KubernetesOptions:
    return KubernetesOptions(console_namespace=settings.DEPLOYMENTS_KUBE_CONSOLE_NAMESPACE)


def _kubernetes() -> Backend:
    import kubernetes

    from worker.deployments.kube import KubernetesBackend

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return KubernetesBackend(
        kubernetes.client.ApiClient(), namespace=settings.DEPLOYMENTS_KUBE_NAMESPACE, options=kubernetes_options()
    )


def get_backend(kind: str) -> Any:
    if kind == "local":
        return _local(str(settings.DEPLOYMENTS_STATE_DIR))
    if kind == "docker":
        return _docker()
    if kind == "kubernetes":
        return _kubernetes()
    raise ValueError(f"unknown deployment backend {kind!r}")


def max_replicas(kind: str) -> int:
    return settings.DEPLOYMENTS_MAX_REPLICAS_KUBERNETES if kind == "kubernetes" else settings.DEPLOYMENTS_MAX_REPLICAS
