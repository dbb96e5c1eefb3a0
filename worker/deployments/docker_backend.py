"""The Docker backend: one image per model set, N containers on the host network, replaced on change.

The build context is assembled from scratch for each model set (so nothing else of the console's tree
reaches the daemon):

    serving/                 the model server runtime (no caches), with serving/requirements.txt
    serving/Dockerfile       its Dockerfile; BASE_IMAGE is a build ARG (default python:3.11-slim)
    models/spec.json         the server spec, artifact paths relative to it
    models/<sha256>.zip      every bundle the spec names, checked against its sha256 while copying

and built with `--target deployment --build-arg ARTIFACTS=models`. The tag is the hash of the artifact set
(`mlops-model-server/<name>:<hash>`), so a changed split reuses the image and a new version builds one.

Containers run with `network_mode="host"` on distinct loopback ports (the spec's traffic split is applied
inside each server), and all of them also listen on the deployment's service port with SO_REUSEPORT (the
image's fixed uid lets them share it): that is the endpoint clients use, balanced by the kernel and kept for
as long as the deployment has containers (it is a label on each). A spec change replaces containers one at a
time: start the new one on a free port, wait until it serves the new split, then stop the old one, so some
container always answers. The token
and console URL reach the server through the spec file in the image; containers are labelled with the
deployment, replica and spec hash, which is all `observe` needs to find them again after a restart.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from worker.deployments.local import free_port
from worker.deployments.probe import probe_server
from worker.deployments.spec import (
    BackendError,
    DeploymentSpec,
    ObservedState,
    ReplicaHealth,
    ReplicaState,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE_IMAGE = "python:3.11-slim"
LABEL_DEPLOYMENT = "mlops-console.deployment"
LABEL_REPLICA = "mlops-console.replica"
LABEL_HASH = "mlops-console.serving-hash"
LABEL_PORT = "mlops-console.port"
LABEL_SERVICE_PORT = "mlops-console.service-port"
READY_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2
_HASH_CHUNK = 1 << 20


def _copy_verified(source: Path, target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(_HASH_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise BackendError(f"artifact {source} has sha256 {digest.hexdigest()}, not {sha256}")


def build_context(spec: DeploymentSpec, target: Path, *, serving_root: Path = REPO_ROOT) -> Path:
    """Assemble the image's build context in `target` (emptied first); returns it."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copytree(
        serving_root / "serving",
        target / "serving",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"),
    )
    models = target / "models"
    models.mkdir()
    for version in spec.all_versions():
        destination = models / version.artifact_name
        if not destination.exists():
            _copy_verified(Path(version.artifact_path), destination, version.sha256)
    server_spec = spec.server_spec(lambda version: version.artifact_name)
    (models / "spec.json").write_text(json.dumps(server_spec, indent=2, default=str))
    return target


_RUNTIME_IGNORED = {"__pycache__"}


@functools.cache
def runtime_hash(serving_root: Path = REPO_ROOT) -> str:
    """sha256 of the model server runtime the image is built from (what `build_context` copies)."""
    digest = hashlib.sha256()
    folder = serving_root / "serving"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not _RUNTIME_IGNORED & set(path.parts) and path.suffix not in {".pyc", ".pyo"}:
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def image_tag(spec: DeploymentSpec, serving_root: Path = REPO_ROOT) -> str:
    """One image per deployment, spec and runtime: the spec (so the token and split) is baked in with the
    models, and a console upgrade that changes the model server builds new images rather than reusing old ones.
    """
    return f"mlops-model-server/{spec.name}:{spec.serving_hash()[:16]}-{runtime_hash(serving_root)[:12]}"


class DockerBackend:
    kind = "docker"

    def __init__(
        self,
        client: Any,
        *,
        work_dir: str | Path,
        base_image: str = DEFAULT_BASE_IMAGE,
        host: str = "127.0.0.1",
        serving_root: str | Path = REPO_ROOT,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        self.work_dir = Path(work_dir)
        self.base_image = base_image
        self.host = host
        self.serving_root = Path(serving_root)
        self.ready_timeout = ready_timeout

    def ensure_image(self, spec: DeploymentSpec) -> str:
        import docker.errors

        tag = image_tag(spec, self.serving_root)
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        context = build_context(spec, self.work_dir / "build" / spec.name, serving_root=self.serving_root)
        try:
            self.client.images.build(
                path=str(context),
                dockerfile="serving/Dockerfile",
                tag=tag,
                target="deployment",
                buildargs={"BASE_IMAGE": self.base_image, "ARTIFACTS": "models"},
                labels={LABEL_DEPLOYMENT: spec.name},
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(line.get("stream") or line.get("error") or "") for line in exc.build_log)
            raise BackendError(f"building {tag} failed: {exc.msg}\n{log[-2000:]}") from exc
        finally:
            shutil.rmtree(context, ignore_errors=True)
        logger.info("built model server image %s", tag)
        return tag

    def _containers(self, name: str) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": f"{LABEL_DEPLOYMENT}={name}"})

    def _service_port(self, containers: list[Any]) -> int:
        for container in containers:
            if container.labels.get(LABEL_SERVICE_PORT):
                return int(container.labels[LABEL_SERVICE_PORT])
        return free_port(self.host)

    def _run(self, name: str, tag: str, spec_hash: str, index: int, *, workers: int, service_port: int) -> Any:
        port = free_port(self.host)
        container = self.client.containers.run(
            tag,
            command=["--spec", "/models/spec.json", "--host", self.host, "--port", str(port)]
            + ["--service-port", str(service_port), "--workers", str(workers)]
            + ["--pid-file", "/run/model-server/master.pid"],
            name=f"mlops-{name}-{index}-{port}",
            detach=True,
            network_mode="host",
            labels={
                LABEL_DEPLOYMENT: name,
                LABEL_REPLICA: str(index),
                LABEL_HASH: spec_hash,
                LABEL_PORT: str(port),
                LABEL_SERVICE_PORT: str(service_port),
            },
            # The console restarts what dies (and sees it die); a restart policy would hide crashes from it.
            restart_policy={"Name": "no"},
        )
        logger.info("started container %s for %s-%s on port %s", container.short_id, name, index, port)
        return container

    def _wait_ready(self, spec: DeploymentSpec, container: Any) -> None:
        port = int(container.labels[LABEL_PORT])
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            container.reload()
            if container.status in {"exited", "dead"}:
                logs = container.logs(tail=40).decode(errors="replace")
                raise BackendError(f"container {container.name} exited: {logs}")
            ready, traffic, _, _ = probe_server(self.host, port, spec.name)
            if ready and traffic == spec.traffic():
                return
            time.sleep(POLL_SECONDS)
        raise BackendError(f"container {container.name} was not ready after {self.ready_timeout:.0f} s")

    def _remove(self, container: Any) -> None:
        import docker.errors

        try:
            container.stop(timeout=35)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        tag = self.ensure_image(desired)
        wanted_hash = desired.serving_hash()
        containers = self._containers(desired.name)
        service_port = self._service_port(containers)
        by_replica: dict[int, list[Any]] = {}
        for container in containers:
            by_replica.setdefault(int(container.labels.get(LABEL_REPLICA, "-1")), []).append(container)
        for index in range(desired.replicas):
            current = by_replica.pop(index, [])
            good = [c for c in current if c.status == "running" and c.labels.get(LABEL_HASH) == wanted_hash]
            if good:
                for container in current:
                    if container is not good[0]:
                        self._remove(container)
                continue
            # Start the replacement first and retire the old container only once the new one serves.
            new = self._run(desired.name, tag, wanted_hash, index, workers=desired.workers, service_port=service_port)
            try:
                self._wait_ready(desired, new)
            except BackendError:
                self._remove(new)
                raise
            for container in current:
                self._remove(container)
        for leftovers in by_replica.values():
            for container in leftovers:
                self._remove(container)
        return self.observe(desired.name)

    def observe(self, name: str) -> ObservedState:
        replicas = []
        containers = self._containers(name)
        for container in sorted(containers, key=lambda c: int(c.labels.get(LABEL_REPLICA, "0"))):
            port = int(container.labels.get(LABEL_PORT, "0"))
            if container.status != "running":
                health, traffic, shadow, detail = ReplicaHealth.DEAD, {}, None, container.status
            else:
                ready, traffic, shadow, detail = probe_server(self.host, port, name)
                health = ReplicaHealth.READY if ready else ReplicaHealth.STARTING
            replicas.append(
                ReplicaState(
                    replica=f"{name}-{container.labels.get(LABEL_REPLICA)}",
                    address=self.host,
                    port=port,
                    health=health,
                    container_id=container.id,
                    traffic=traffic,
                    shadow=shadow,
                    detail=detail,
                )
            )
        endpoint = f"http://{self.host}:{self._service_port(containers)}" if containers else ""
        return ObservedState(name=name, replicas=tuple(replicas), endpoint=endpoint)

    def scale(self, name: str, replicas: int) -> ObservedState:
        containers = self._containers(name)
        if not containers:
            raise BackendError(f"deployment {name!r} has no containers to scale")
        # Every container of a deployment runs the same image; scaling reuses it.
        image = containers[0].image
        spec_hash = containers[0].labels.get(LABEL_HASH)
        tag = image.tags[0] if image.tags else image.id
        existing = {int(c.labels.get(LABEL_REPLICA, "-1")): c for c in containers}
        for index, container in existing.items():
            if index >= replicas:
                self._remove(container)
        service_port = self._service_port(containers)
        for index in range(replicas):
            if index not in existing:
                self._run(name, tag, spec_hash, index, workers=_workers_of(containers[0]), service_port=service_port)
        return self.observe(name)

    def delete(self, name: str) -> None:
        for container in self._containers(name):
            self._remove(container)


def _workers_of(container: Any) -> int:
    command = list(container.attrs.get("Args") or [])
    if "--workers" in command:
        return int(command[command.index("--workers") + 1])
    return 1
