"""The Docker backend: one image per model set, N containers on the host network.

The build context is assembled from scratch for each model set (so nothing else of the console's tree
reaches the daemon):

    serving/                 the model server runtime (no caches), with serving/requirements.txt
    serving/Dockerfile       its Dockerfile; BASE_IMAGE is a build ARG (default python:3.11-slim)
    models/<sha256>.zip      every bundle the spec names, checked against its sha256 while copying

and built with `--target deployment --build-arg ARTIFACTS=models`. The tag is the hash of the artifact set and
of the runtime (`mlops-model-server/<name>:<artifacts>-<runtime>`): a new version builds an image, a changed
split does not.

The spec (split, shadow, ingest token) is not in the image, so that no image layer holds a secret: it is
written into each container as /run/model-server/spec.json (owned by the image's model-server user, mode
0400, on the container's own anonymous volume, the one writable place besides a tmpfs /tmp) between create and
start. That file is the truth about what a container should serve. A change that keeps the
artifact set (a canary step, a blue-green switch, a shadow) rewrites it in the running containers and sends
SIGHUP: the model server's graceful reload, as on the local backend, so no request fails. A change of the
artifact set or worker count replaces containers one at a time: start the new one, wait until it serves,
then stop the old one.

Containers run with `network_mode="host"` on distinct loopback ports, and all of them also listen on the
deployment's service port with SO_REUSEPORT (the image's fixed uid lets them share it): that is the endpoint
clients use, balanced by the kernel and kept for as long as the deployment has containers. Host networking is
what makes that shared endpoint possible (published ports on a bridge network cannot share one host port), and
it lets a container reach a console listening on the host's loopback for events. Labels name the deployment,
replica, ports and resources, which is all `observe` and `scale` need to find and copy them after a restart.

Containers are confined: memory, CPU and process limits from the spec's resources (memory swap equal to the
memory limit), `no-new-privileges`, every capability dropped, a read-only root filesystem.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from serving.server import RELOAD_DONE, RELOAD_REFUSED
from worker.deployments.local import LOG_TAIL_BYTES, free_port
from worker.deployments.probe import probe_server
from worker.deployments.spec import (
    BackendError,
    DeploymentSpec,
    ObservedState,
    ReplicaHealth,
    ReplicaState,
    Resources,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE_IMAGE = "python:3.11-slim"
LABEL_DEPLOYMENT = "mlops-console.deployment"
LABEL_REPLICA = "mlops-console.replica"
LABEL_PORT = "mlops-console.port"
LABEL_SERVICE_PORT = "mlops-console.service-port"
LABEL_RESOURCES = "mlops-console.resources"
# The folder of the spec: an anonymous volume per container (the root filesystem is read-only, and `docker cp`
# cannot write into a tmpfs). The Dockerfile creates it.
SPEC_DIR = "/run/model-server"
SPEC_PATH = f"{SPEC_DIR}/spec.json"
MODELS_DIR = "/models"
# Processes and threads of one container: gunicorn workers, each with its numeric libraries' and own threads.
PIDS_LIMIT = 512
TMP_TMPFS = "size=256m,mode=1777"
# The Dockerfile's model-server user: the spec file belongs to it.
MODEL_SERVER_UID = 10001
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
    """One image per deployment, artifact set and runtime, so that a console upgrade that changes the model
    server builds new images rather than reusing old ones."""
    artifacts = hashlib.sha256(" ".join(sorted({v.sha256 for v in spec.all_versions()})).encode()).hexdigest()
    return f"mlops-model-server/{spec.name}:{artifacts[:16]}-{runtime_hash(serving_root)[:12]}"


def container_spec(spec: DeploymentSpec) -> str:
    """The spec file a container serves, its artifact paths in the image's /models."""
    return json.dumps(spec.server_spec(lambda version: f"{MODELS_DIR}/{version.artifact_name}"), indent=2, default=str)


_CPU_RE = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def limits(resources: Resources) -> dict[str, Any]:
    """Docker's resource limits from the spec's Kubernetes-style quantities ("500m" CPUs, "1Gi" of memory)."""
    cpu = _CPU_RE.match(resources.cpu_limit.strip())
    memory = _MEMORY_RE.match(resources.memory_limit.strip())
    if cpu is None or float(cpu[1]) <= 0:
        raise BackendError(f"resources.cpu_limit {resources.cpu_limit!r} is not a CPU quantity such as 1 or 500m")
    if memory is None or float(memory[1]) <= 0:
        raise BackendError(f"resources.memory_limit {resources.memory_limit!r} is not a size such as 512Mi or 1Gi")
    cpus = float(cpu[1]) / (1000 if cpu[2] else 1)
    memory_bytes = int(float(memory[1]) * _MEMORY_UNITS[memory[2]])
    return {
        "nano_cpus": int(cpus * 1e9),
        "mem_limit": memory_bytes,
        "memswap_limit": memory_bytes,
        "pids_limit": PIDS_LIMIT,
    }


def spec_archive(text: str) -> bytes:
    """A tar holding spec.json for `put_archive`: readable only by the model server's user (it holds the token)."""
    data = text.encode()
    member = tarfile.TarInfo("spec.json")
    member.size, member.mode, member.mtime = len(data), 0o400, int(time.time())
    member.uid = member.gid = MODEL_SERVER_UID
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def container_usage(container: Any) -> tuple[float | None, int | None]:
    """CPU seconds the container used since it started, and its memory without the reclaimable page cache (as
    `docker stats` shows it); one sample (`one_shot`), so observing costs no wait. (None, None) on failure."""
    import docker.errors

    try:
        stats = container.stats(stream=False, one_shot=True)
    except (docker.errors.DockerException, OSError):
        return None, None
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage")
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    cache = (memory.get("stats") or {}).get("inactive_file", 0)
    return (cpu / 1e9 if cpu is not None else None), (max(usage - cache, 0) if usage is not None else None)


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

    @staticmethod
    def _spec_of(container: Any) -> str | None:
        import docker.errors

        try:
            chunks, _ = container.get_archive(SPEC_PATH)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile("spec.json")
            return member.read().decode() if member else None

    def _run(
        self, name: str, tag: str, index: int, *, workers: int, service_port: int, spec: str, resources: Resources
    ) -> Any:
        from docker.types import Mount

        port = free_port(self.host)
        container = self.client.containers.create(
            tag,
            command=["--spec", SPEC_PATH, "--host", self.host, "--port", str(port)]
            + ["--service-port", str(service_port), "--workers", str(workers)]
            + ["--pid-file", "/tmp/master.pid"],
            name=f"mlops-{name}-{index}-{port}",
            network_mode="host",
            labels={
                LABEL_DEPLOYMENT: name,
                LABEL_REPLICA: str(index),
                LABEL_PORT: str(port),
                LABEL_SERVICE_PORT: str(service_port),
                LABEL_RESOURCES: json.dumps(asdict(resources)),
            },
            # The console restarts what dies (and sees it die); a restart policy would hide crashes from it.
            restart_policy={"Name": "no"},
            read_only=True,
            tmpfs={"/tmp": TMP_TMPFS},
            mounts=[Mount(target=SPEC_DIR, source=None, type="volume")],
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            **limits(resources),
        )
        container.put_archive(SPEC_DIR, spec_archive(spec))
        container.start()
        logger.info("started container %s for %s-%s on port %s", container.short_id, name, index, port)
        return container

    def _wait_serving(self, desired: DeploymentSpec, container: Any, *, signalled_at: float | None = None) -> None:
        """Wait until the container serves `desired`; after a SIGHUP, fail as soon as the server refuses it."""
        port = int(container.labels[LABEL_PORT])
        shadow = str(desired.shadow.version_id) if desired.shadow else None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            container.reload()
            if container.status in {"exited", "dead"}:
                logs = container.logs(tail=40).decode(errors="replace")
                raise BackendError(f"container {container.name} exited: {logs}")
            if signalled_at is not None:
                logs = container.logs(since=signalled_at).decode(errors="replace")
                if RELOAD_REFUSED in logs:
                    raise BackendError(f"container {container.name} refused the new spec: {logs[-LOG_TAIL_BYTES:]}")
                if RELOAD_DONE not in logs:
                    time.sleep(POLL_SECONDS)
                    continue
            ready, traffic, served_shadow, _ = probe_server(self.host, port, desired.name)
            if ready and traffic == desired.traffic() and served_shadow == shadow:
                return
            time.sleep(POLL_SECONDS)
        raise BackendError(f"container {container.name} was not serving the spec after {self.ready_timeout:.0f} s")

    def _reload(self, desired: DeploymentSpec, container: Any, old: str | None, new: str) -> None:
        """Rewrite the running container's spec and reload it gracefully; put the old spec back if refused."""
        signalled_at = time.time()
        container.put_archive(SPEC_DIR, spec_archive(new))
        container.kill(signal="SIGHUP")
        logger.info("reloading container %s of %s with a new spec", container.short_id, desired.name)
        try:
            self._wait_serving(desired, container, signalled_at=signalled_at)
        except BackendError:
            if old is not None:
                container.put_archive(SPEC_DIR, spec_archive(old))
            raise

    def _remove(self, container: Any) -> None:
        import docker.errors

        try:
            container.stop(timeout=35)
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        tag = self.ensure_image(desired)
        spec = container_spec(desired)
        containers = self._containers(desired.name)
        service_port = self._service_port(containers)
        by_replica: dict[int, list[Any]] = {}
        for container in containers:
            by_replica.setdefault(int(container.labels.get(LABEL_REPLICA, "-1")), []).append(container)
        for index in range(desired.replicas):
            current = by_replica.pop(index, [])
            reusable = [
                c
                for c in current
                if c.status == "running" and c.attrs["Config"]["Image"] == tag and _workers_of(c) == desired.workers
            ]
            if reusable:
                keep = reusable[0]
                for container in current:
                    if container is not keep:
                        self._remove(container)
                served = self._spec_of(keep)
                if served != spec:
                    self._reload(desired, keep, served, spec)
                continue
            # Start the replacement first and retire the old container only once the new one serves.
            new = self._run(
                desired.name,
                tag,
                index,
                workers=desired.workers,
                service_port=service_port,
                spec=spec,
                resources=desired.resources,
            )
            try:
                self._wait_serving(desired, new)
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
            cpu_seconds, rss_bytes = container_usage(container) if container.status == "running" else (None, None)
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
                    cpu_seconds=cpu_seconds,
                    rss_bytes=rss_bytes,
                )
            )
        endpoint = f"http://{self.host}:{self._service_port(containers)}" if containers else ""
        return ObservedState(name=name, replicas=tuple(replicas), endpoint=endpoint)

    def scale(self, name: str, replicas: int) -> ObservedState:
        running = [c for c in self._containers(name) if c.status == "running"]
        if not running:
            raise BackendError(f"deployment {name!r} has no running container to scale")
        # New replicas copy a running one: its image, worker count and spec.
        model = running[0]
        spec = self._spec_of(model)
        if spec is None:
            raise BackendError(f"container {model.name} has no spec to copy")
        containers = self._containers(name)
        existing = {int(c.labels.get(LABEL_REPLICA, "-1")): c for c in containers}
        for index, container in existing.items():
            if index >= replicas:
                self._remove(container)
        service_port = self._service_port(containers)
        for index in range(replicas):
            if index not in existing:
                self._run(
                    name,
                    model.attrs["Config"]["Image"],
                    index,
                    workers=_workers_of(model),
                    service_port=service_port,
                    spec=spec,
                    resources=Resources(**json.loads(model.labels.get(LABEL_RESOURCES) or "{}")),
                )
        return self.observe(name)

    def delete(self, name: str) -> None:
        for container in self._containers(name):
            self._remove(container)


def _workers_of(container: Any) -> int:
    command = list(container.attrs.get("Args") or [])
    if "--workers" in command:
        return int(command[command.index("--workers") + 1])
    return 1
