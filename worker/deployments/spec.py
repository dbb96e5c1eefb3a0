"""What a deployment should run (`DeploymentSpec`) and what a backend found running (`ObservedState`).

Plain data, no Django: the console builds a `DeploymentSpec` from a deployment row, a backend makes the
world match it and answers with an `ObservedState`. `server_spec()` is the JSON the model server reads
(docs/model-server.md), with artifact paths chosen by the backend (host paths locally, `/models/...` in a
container or pod).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

TOTAL_WEIGHT = 100
# A Kubernetes object name (DNS-1123 label), which also suits a Docker container name and a folder.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_MAX_LENGTH = 40
SERVING_PORT = 8080


def default_deployment_name(model_name: str) -> str:
    """The name a deployment of a model gets when none is given: the model's, lower-cased, '_' as '-'."""
    return model_name.lower().replace("_", "-")[:NAME_MAX_LENGTH]


class DeploymentSpecError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class VersionSpec:
    """One model version to load: the bundle on the console's disk, its sha256 and its share of traffic."""

    version_id: int | str
    label: str
    artifact_path: str
    sha256: str
    weight: int = 0

    @property
    def artifact_name(self) -> str:
        # Inside an image or pod artifacts are named by content, so two versions never collide.
        return f"{self.sha256}.zip"


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class DeploymentSpec:
    deployment_id: int | str
    name: str
    versions: tuple[VersionSpec, ...]
    shadow: VersionSpec | None = None
    replicas: int = 1
    workers: int = 1
    token: str = ""
    console_url: str = ""
    trust_pickle: bool = False
    autoscale_min: int | None = None
    autoscale_max: int | None = None
    target_cpu_percent: int = 70
    resources: Resources = field(default_factory=Resources)
    # Kubernetes and Docker only.
    image: str = "mlops-model-server:latest"
    namespace: str = "default"
    artifact_base_url: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise DeploymentSpecError("name", "must be lower-case letters, digits and '-', at most 40 characters")
        if not self.versions:
            raise DeploymentSpecError("versions", "at least one version is needed")
        total = sum(v.weight for v in self.versions)
        if total != TOTAL_WEIGHT:
            raise DeploymentSpecError("versions", f"weights must sum to {TOTAL_WEIGHT}, not {total}")
        if len({str(v.version_id) for v in self.versions}) != len(self.versions):
            raise DeploymentSpecError("versions", "a version appears twice")
        if self.shadow is not None and str(self.shadow.version_id) in {str(v.version_id) for v in self.versions}:
            raise DeploymentSpecError("shadow", "the shadow must not also be a live version")
        if self.replicas < 0:
            raise DeploymentSpecError("replicas", "must not be negative")
        if self.workers < 1:
            raise DeploymentSpecError("workers", "must be at least 1")
        if (self.autoscale_min is None) != (self.autoscale_max is None):
            raise DeploymentSpecError("autoscale", "give both the minimum and the maximum, or neither")
        if self.autoscale_min is not None and not 1 <= self.autoscale_min <= self.autoscale_max:
            raise DeploymentSpecError("autoscale", "needs 1 <= minimum <= maximum")

    @property
    def autoscaled(self) -> bool:
        return self.autoscale_min is not None

    def all_versions(self) -> tuple[VersionSpec, ...]:
        return self.versions + ((self.shadow,) if self.shadow else ())

    def server_spec(self, artifact_path: Callable[[VersionSpec], str] | None = None) -> dict[str, Any]:
        """The model server's spec; `artifact_path` maps a version to where the server finds its bundle."""
        locate = artifact_path or (lambda version: version.artifact_path)

        def entry(version: VersionSpec, *, weight: bool) -> dict[str, Any]:
            data: dict[str, Any] = {
                "version_id": version.version_id,
                "label": version.label,
                "artifact_path": locate(version),
                "sha256": version.sha256,
            }
            if weight:
                data["weight"] = version.weight
            return data

        return {
            "deployment_id": self.deployment_id,
            "name": self.name,
            "token": self.token,
            "console_url": self.console_url,
            "versions": [entry(v, weight=True) for v in self.versions],
            "shadow": entry(self.shadow, weight=False) if self.shadow else None,
            "trust_pickle": self.trust_pickle,
        }

    def traffic(self) -> dict[str, int]:
        return {str(v.version_id): v.weight for v in self.versions}

    def serving_hash(self) -> str:
        """Changes exactly when the model server must reload (versions, weights, shadow, token, target)."""
        text = json.dumps(self.server_spec(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentSpec:
        data = dict(data)
        data["versions"] = tuple(VersionSpec(**v) for v in data["versions"])
        data["shadow"] = VersionSpec(**data["shadow"]) if data.get("shadow") else None
        data["resources"] = Resources(**(data.get("resources") or {}))
        data["labels"] = dict(data.get("labels") or {})
        return cls(**data)

    def with_replicas(self, replicas: int) -> DeploymentSpec:
        return replace(self, replicas=replicas)


class ReplicaHealth:
    READY = "ready"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    DEAD = "dead"


@dataclass(frozen=True)
class ReplicaState:
    """One running model server as a backend sees it."""

    replica: str
    address: str
    port: int
    health: str
    pid: int | None = None
    container_id: str | None = None
    traffic: Mapping[str, int] = field(default_factory=dict)
    shadow: str | None = None
    detail: str = ""
    # Restarts after crashes, counted while they come close together (backends that restart replicas
    # themselves): a dead replica in a crash loop waits until `next_restart_at` (a Unix time) to be restarted.
    restarts: int = 0
    crash_loop: bool = False
    next_restart_at: float | None = None
    # The server's process tree (master and workers) as the backend measured it when observing: CPU time used
    # since it started and resident memory. None where the backend does not measure (Docker, Kubernetes).
    cpu_seconds: float | None = None
    rss_bytes: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True)
class ObservedState:
    name: str
    replicas: tuple[ReplicaState, ...] = ()
    detail: str = ""
    # The one address clients use, balanced across the replicas; empty where the backend has none.
    endpoint: str = ""

    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.health == ReplicaHealth.READY)

    def serves(self, spec: DeploymentSpec) -> bool:
        """Every wanted replica is ready with the wanted traffic split and shadow."""
        shadow = str(spec.shadow.version_id) if spec.shadow else None
        ready = [r for r in self.replicas if r.health == ReplicaHealth.READY]
        return len(ready) >= spec.replicas and all(
            dict(r.traffic) == spec.traffic() and r.shadow == shadow for r in ready
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "detail": self.detail,
            "endpoint": self.endpoint,
            "replicas": [{**asdict(r), "traffic": dict(r.traffic), "url": r.url} for r in self.replicas],
        }


class BackendError(RuntimeError):
    """The backend could not make the world match the spec; the message says what failed."""
