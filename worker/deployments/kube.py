"""The Kubernetes backend: manifests rendered as plain dicts, applied with server-side apply.

One deployment becomes these objects, all named after it and labelled `app.kubernetes.io/instance=<name>`:

- **ConfigMap** `<name>-spec`: the model server spec (`spec.json`) without the ingest token;
- **Secret** `<name>-ingest`: the ingest token (left out of GitOps exports: create it out of band);
- **Deployment** `<name>`: the model server pods. An **initContainer** (`prepare`, same image) reads the
  spec from the ConfigMap, fetches every artifact from the console (`artifact_base_url` + sha256, with the
  ingest token) into an emptyDir, checks each sha256, and writes the final spec (with the token) beside
  them. We chose fetching over baking artifacts into the image because one runtime image then serves every
  model, and a new version needs no image build or registry push; with an empty `artifact_base_url` the
  init container expects the artifacts baked into the image under `/models` (the Docker backend's image).
  Readiness probe `/v2/health/ready`, liveness `/v2/health/live`, resources from the spec, non-root with a
  read-only root filesystem, no capabilities, the RuntimeDefault seccomp profile and no service account
  token; the final spec (it holds the token) is written 0600. The pod template carries the spec's hash as an
  annotation, so a new split or version rolls the pods (maxUnavailable 0: old pods serve until new ones are
  ready);
- **Service** `<name>` (port 80 → 8080);
- **HorizontalPodAutoscaler** (autoscaling/v2, CPU utilisation) when the spec autoscales; the Deployment then
  leaves `replicas` to it;
- **PodDisruptionBudget** (at most one pod voluntarily evicted at a time);
- **NetworkPolicy**: ingress only on the serving port, from namespaces or pods labelled
  `mlops-console/model-access=true`; egress only to the console's pods (events, artifacts) and DNS.

`render_manifests(spec)` is pure, so the same dicts are applied by the backend and exported as YAML for
GitOps (`export_yaml`). Applying is `PATCH` with `application/apply-patch+yaml`, `fieldManager=mlops-console`
and `force=true` on each object's path, through the official client's `ApiClient`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from worker.deployments.spec import (
    SERVING_PORT,
    BackendError,
    DeploymentSpec,
    ObservedState,
    ReplicaHealth,
    ReplicaState,
    VersionSpec,
)

FIELD_MANAGER = "mlops-console"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
ACCESS_LABEL = "mlops-console/model-access"
HASH_ANNOTATION = "mlops-console/serving-hash"
TRAFFIC_ANNOTATION = "mlops-console/traffic"
SHADOW_ANNOTATION = "mlops-console/shadow"
MODELS_DIR = "/run/model-server"
BAKED_MODELS_DIR = "/models"
# (API path prefix, plural) of each kind we manage.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
}

# Run by the init container (python is in the serving image; no other tool is assumed).
PREPARE_SCRIPT = """\
import hashlib, json, os, sys, urllib.request
spec = json.load(open('/config/spec.json'))
spec['token'] = os.environ.get('INGEST_TOKEN', '')
base = os.environ.get('ARTIFACT_BASE_URL', '')
for entry in spec['versions'] + ([spec['shadow']] if spec.get('shadow') else []):
    if not base:
        continue
    request = urllib.request.Request(base + entry['sha256'] + '/', headers={'Authorization': 'Bearer ' + spec['token']})
    data = urllib.request.urlopen(request, timeout=300).read()
    if hashlib.sha256(data).hexdigest() != entry['sha256']:
        sys.exit('artifact ' + entry['sha256'] + ' arrived with another sha256')
    open(entry['artifact_path'], 'wb').write(data)
tmp = '/run/model-server/spec.json.tmp'
json.dump(spec, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w'))
os.replace(tmp, '/run/model-server/spec.json')
"""


@dataclass(frozen=True)
class KubernetesOptions:
    """Where the console runs, for the NetworkPolicy's egress rule, and pod details."""

    console_namespace: str = "mlops"
    console_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "mlops-console"})
    console_port: int = 8000
    image_pull_policy: str = "IfNotPresent"


def labels_for(spec: DeploymentSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "model-server",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "mlops-console/deployment-id": str(spec.deployment_id),
        **dict(spec.labels),
    }


def selector_for(spec: DeploymentSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": spec.name}


def _artifact_path(spec: DeploymentSpec) -> Any:
    folder = MODELS_DIR if spec.artifact_base_url else BAKED_MODELS_DIR

    def locate(version: VersionSpec) -> str:
        return f"{folder}/{version.artifact_name}"

    return locate


def _metadata(spec: DeploymentSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels_for(spec)}


def _deployment(spec: DeploymentSpec, options: KubernetesOptions) -> dict[str, Any]:
    shadow = str(spec.shadow.version_id) if spec.shadow else ""
    annotations = {
        HASH_ANNOTATION: spec.serving_hash(),
        TRAFFIC_ANNOTATION: json.dumps(spec.traffic(), sort_keys=True),
        SHADOW_ANNOTATION: shadow,
    }
    resources = {
        "requests": {"cpu": spec.resources.cpu_request, "memory": spec.resources.memory_request},
        "limits": {"cpu": spec.resources.cpu_limit, "memory": spec.resources.memory_limit},
    }
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    server = {
        "name": "model-server",
        "image": spec.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": [
            "--spec",
            f"{MODELS_DIR}/spec.json",
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVING_PORT),
            "--workers",
            str(spec.workers),
            "--pid-file",
            "/tmp/master.pid",
        ],
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 90,
        },
        # Let the Service stop routing to a terminating pod before gunicorn stops accepting.
        "lifecycle": {"preStop": {"exec": {"command": ["python", "-c", "import time; time.sleep(5)"]}}},
        "resources": resources,
        "securityContext": security,
        "volumeMounts": mounts,
    }
    prepare = {
        "name": "prepare",
        "image": spec.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-c", PREPARE_SCRIPT],
        "env": [
            {"name": "ARTIFACT_BASE_URL", "value": spec.artifact_base_url},
            {
                "name": "INGEST_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": f"{spec.name}-ingest", "key": "token", "optional": True}},
            },
        ],
        "resources": resources,
        "securityContext": security,
        "volumeMounts": [*mounts, {"name": "config", "mountPath": "/config", "readOnly": True}],
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_for(spec)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {"labels": labels_for(spec), "annotations": annotations},
            "spec": {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                # A model server never calls the Kubernetes API: no service account token in its pod.
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 45,
                "initContainers": [prepare],
                "containers": [server],
                "volumes": [
                    {"name": "config", "configMap": {"name": f"{spec.name}-spec"}},
                    {"name": "models", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {"medium": "Memory"}},
                ],
            },
        },
    }
    if not spec.autoscaled:
        # With an HPA the replica count is the HPA's; applying one here would fight it on every apply.
        deployment_spec["replicas"] = spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_metadata(spec, spec.name), "annotations": annotations},
        "spec": deployment_spec,
    }


def render_manifests(
    spec: DeploymentSpec, options: KubernetesOptions | None = None, *, include_secret: bool = True
) -> list[dict[str, Any]]:
    options = options or KubernetesOptions()
    server_spec = spec.server_spec(_artifact_path(spec))
    server_spec["token"] = ""  # the token travels in the Secret, not in a ConfigMap
    manifests: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(spec, f"{spec.name}-spec"),
            "data": {"spec.json": json.dumps(server_spec, indent=2, sort_keys=True, default=str)},
        }
    ]
    if include_secret:
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _metadata(spec, f"{spec.name}-ingest"),
                "type": "Opaque",
                "stringData": {"token": spec.token},
            }
        )
    manifests += [
        _deployment(spec, options),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(spec, spec.name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_for(spec),
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]
    if spec.autoscaled:
        manifests.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": _metadata(spec, spec.name),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
                    "minReplicas": spec.autoscale_min,
                    "maxReplicas": spec.autoscale_max,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": spec.target_cpu_percent},
                            },
                        }
                    ],
                },
            }
        )
    manifests += [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(spec, spec.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_for(spec)}},
        },
        _network_policy(spec, options),
    ]
    return manifests


def _network_policy(spec: DeploymentSpec, options: KubernetesOptions) -> dict[str, Any]:
    access = {ACCESS_LABEL: "true"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "podSelector": {"matchLabels": selector_for(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": access}}, {"podSelector": {"matchLabels": access}}],
                    "ports": [{"protocol": "TCP", "port": SERVING_PORT}],
                }
            ],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": options.console_namespace}
                            },
                            "podSelector": {"matchLabels": dict(options.console_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": options.console_port}],
                },
                {
                    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes a mapping shared by several manifests out in full each time: no &anchors or *aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def export_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, ready to commit to a GitOps repository (ArgoCD, Flux)."""
    return yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def object_path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubernetesBackend:
    """Server-side apply through `kubernetes.client.ApiClient` (configured by the caller: kubeconfig or in-cluster)."""

    kind = "kubernetes"

    def __init__(self, api_client: Any, *, namespace: str = "default", options: KubernetesOptions | None = None):
        self.api = api_client
        self.namespace = namespace
        self.options = options or KubernetesOptions()

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=body)
        data = response.read()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        return response.status, decoded

    def _apply_object(self, manifest: dict[str, Any]) -> None:
        path = object_path(manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        status, body = self._request(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type=APPLY_PATCH,
        )
        if status >= 300:
            message = (body or {}).get("message") if isinstance(body, dict) else body
            raise BackendError(
                f"applying {manifest['kind']} {manifest['metadata']['name']} failed ({status}): {message}"
            )

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        manifests = render_manifests(desired, self.options)
        for manifest in manifests:
            self._apply_object(manifest)
        if not desired.autoscaled:
            # An HPA left from when autoscaling was on would keep resizing the Deployment.
            self._delete_object("HorizontalPodAutoscaler", desired.namespace, desired.name)
        return self.observe(desired.name, namespace=desired.namespace)

    def _delete_object(self, kind: str, namespace: str, name: str) -> None:
        status, body = self._request("DELETE", object_path(kind, namespace, name))
        if status >= 300 and status != 404:
            raise BackendError(f"deleting {kind} {name} failed ({status}): {body}")

    def observe(self, name: str, *, namespace: str | None = None) -> ObservedState:
        namespace = namespace or self.namespace
        status, deployment = self._request("GET", object_path("Deployment", namespace, name))
        if status == 404:
            return ObservedState(name=name, detail="no Deployment")
        if status >= 300:
            raise BackendError(f"reading Deployment {name} failed ({status})")
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        status, pods = self._request("GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)])
        if status >= 300:
            raise BackendError(f"listing pods of {name} failed ({status})")
        replicas = tuple(_replica_from_pod(pod) for pod in (pods or {}).get("items", []))
        wanted = deployment["spec"].get("replicas")
        ready = (deployment.get("status") or {}).get("readyReplicas", 0)
        # The Service balances across the ready pods; its cluster DNS name is the endpoint inside the cluster.
        endpoint = f"http://{name}.{namespace}.svc"
        return ObservedState(name=name, replicas=replicas, detail=f"{ready} of {wanted} ready", endpoint=endpoint)

    def scale(self, name: str, replicas: int, *, namespace: str | None = None) -> ObservedState:
        namespace = namespace or self.namespace
        status, body = self._request(
            "PATCH",
            object_path("Deployment", namespace, name) + "/scale",
            body={"spec": {"replicas": replicas}},
            content_type=MERGE_PATCH,
        )
        if status >= 300:
            raise BackendError(f"scaling Deployment {name} failed ({status}): {body}")
        return self.observe(name, namespace=namespace)

    def delete(self, name: str, *, namespace: str | None = None) -> None:
        namespace = namespace or self.namespace
        for kind, object_name in [
            ("Deployment", name),
            ("Service", name),
            ("HorizontalPodAutoscaler", name),
            ("PodDisruptionBudget", name),
            ("NetworkPolicy", name),
            ("ConfigMap", f"{name}-spec"),
            ("Secret", f"{name}-ingest"),
        ]:
            self._delete_object(kind, namespace, object_name)


def _replica_from_pod(pod: Mapping[str, Any]) -> ReplicaState:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = metadata.get("annotations") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    containers = status.get("containerStatuses") or []
    if status.get("phase") in {"Failed", "Succeeded"}:
        health = ReplicaHealth.DEAD
    elif conditions.get("Ready") == "True":
        health = ReplicaHealth.READY
    elif status.get("phase") == "Pending":
        health = ReplicaHealth.STARTING
    else:
        health = ReplicaHealth.UNHEALTHY
    try:
        traffic = {str(k): int(v) for k, v in json.loads(annotations.get(TRAFFIC_ANNOTATION) or "{}").items()}
    except ValueError:
        traffic = {}
    return ReplicaState(
        replica=metadata.get("name", ""),
        address=status.get("podIP") or "",
        port=SERVING_PORT,
        health=health,
        container_id=containers[0].get("containerID") if containers else None,
        traffic=traffic,
        shadow=annotations.get(SHADOW_ANNOTATION) or None,
        detail=status.get("phase", ""),
    )
