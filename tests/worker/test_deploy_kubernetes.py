"""Kubernetes manifests (validated against the 1.30 OpenAPI schema) and the apply calls.

No Kubernetes API server can run here, so the apply/observe/scale/delete calls go to `RecordingApiClient`:
the official `kubernetes.client.ApiClient` with only `call_api` (the HTTP round trip) replaced by a
recording stand-in that answers from a dict of canned responses. It is the only mock in these tests.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from worker.deployments.kube import (
    ACCESS_LABEL,
    APPLY_PATCH,
    FIELD_MANAGER,
    HASH_ANNOTATION,
    KubernetesBackend,
    KubernetesOptions,
    export_yaml,
    render_manifests,
)
from worker.deployments.spec import BackendError, DeploymentSpec, ReplicaHealth, Resources, VersionSpec

SHA_A, SHA_B = "a" * 64, "b" * 64


def make_spec(**changes: Any) -> DeploymentSpec:
    values: dict[str, Any] = {
        "deployment_id": 42,
        "name": "churn",
        "versions": (
            VersionSpec(7, "v7", "/store/a.zip", SHA_A, 90),
            VersionSpec(8, "v8", "/store/b.zip", SHA_B, 10),
        ),
        "replicas": 3,
        "workers": 2,
        "token": "ingest-secret",
        "console_url": "http://console.mlops.svc:8000/api/v1/ingest/predictions/",
        "image": "registry.internal/model-server:1.0",
        "namespace": "models",
        "artifact_base_url": "http://console.mlops.svc:8000/api/v1/ingest/artifacts/",
        "resources": Resources(cpu_request="500m", cpu_limit="2", memory_request="512Mi", memory_limit="2Gi"),
    }
    values.update(changes)
    return DeploymentSpec(**values)


def by_kind(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests}


@pytest.mark.parametrize("autoscaled", [False, True])
def test_every_manifest_is_valid_for_kubernetes_1_30(autoscaled: bool) -> None:
    spec = make_spec(autoscale_min=2, autoscale_max=10) if autoscaled else make_spec()
    manifests = render_manifests(spec)
    kinds = [m["kind"] for m in manifests]
    expected = ["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    if autoscaled:
        expected.insert(4, "HorizontalPodAutoscaler")
    assert kinds == expected
    for manifest in manifests:
        kubernetes_validate.validate(manifest, desired_version="1.30", strict=True)


def test_deployment_probes_resources_and_spec_mount() -> None:
    spec = make_spec()
    deployment = by_kind(render_manifests(spec))["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert server["args"][:2] == ["--spec", "/run/model-server/spec.json"] and "--workers" in server["args"]
    prepare = pod["initContainers"][0]
    assert {"name": "config", "mountPath": "/config", "readOnly": True} in prepare["volumeMounts"]
    assert pod["volumes"][0] == {"name": "config", "configMap": {"name": "churn-spec"}}
    env = {e["name"]: e for e in prepare["env"]}
    assert env["ARTIFACT_BASE_URL"]["value"] == spec.artifact_base_url
    assert env["INGEST_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "churn-ingest"
    assert deployment["spec"]["template"]["metadata"]["annotations"][HASH_ANNOTATION] == spec.serving_hash()


def test_pods_have_no_api_token_the_runtime_default_seccomp_profile_and_no_privileges() -> None:
    pod = by_kind(render_manifests(make_spec()))["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
    # The init container writes the spec holding the ingest token for the model server's user only.
    assert "0o600" in pod["initContainers"][0]["command"][2]


def test_the_spec_configmap_holds_no_token_and_names_artifacts_by_hash() -> None:
    manifests = by_kind(render_manifests(make_spec()))
    server_spec = json.loads(manifests["ConfigMap"]["data"]["spec.json"])
    assert server_spec["token"] == ""
    assert [v["artifact_path"] for v in server_spec["versions"]] == [
        f"/run/model-server/{SHA_A}.zip",
        f"/run/model-server/{SHA_B}.zip",
    ]
    assert [v["weight"] for v in server_spec["versions"]] == [90, 10]
    assert manifests["Secret"]["stringData"] == {"token": "ingest-secret"}
    # Without a fetch URL the artifacts are expected baked into the image.
    baked = json.loads(by_kind(render_manifests(make_spec(artifact_base_url="")))["ConfigMap"]["data"]["spec.json"])
    assert baked["versions"][0]["artifact_path"] == f"/models/{SHA_A}.zip"


def test_a_new_split_changes_the_pod_template() -> None:
    before = by_kind(render_manifests(make_spec()))["Deployment"]["spec"]["template"]
    versions = (VersionSpec(7, "v7", "/a", SHA_A, 50), VersionSpec(8, "v8", "/b", SHA_B, 50))
    after = by_kind(render_manifests(make_spec(versions=versions)))["Deployment"]["spec"]["template"]
    assert before["metadata"]["annotations"][HASH_ANNOTATION] != after["metadata"]["annotations"][HASH_ANNOTATION]


def test_autoscaling_gives_replicas_to_the_hpa() -> None:
    manifests = by_kind(render_manifests(make_spec(autoscale_min=2, autoscale_max=10, target_cpu_percent=60)))
    assert "replicas" not in manifests["Deployment"]["spec"]
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}


def test_network_policy_limits_ingress_and_egress() -> None:
    options = KubernetesOptions(console_namespace="mlops", console_port=8000)
    policy = by_kind(render_manifests(make_spec(), options))["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert {"namespaceSelector": {"matchLabels": {ACCESS_LABEL: "true"}}} in ingress["from"]
    console = policy["egress"][0]
    assert console["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "mlops"}
    assert console["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert {"protocol": "UDP", "port": 53} in policy["egress"][1]["ports"]


def test_export_is_multi_document_yaml_without_the_secret() -> None:
    text = export_yaml(render_manifests(make_spec(), include_secret=False))
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents][:2] == ["ConfigMap", "Deployment"]
    assert "ingest-secret" not in text
    assert documents == render_manifests(make_spec(), include_secret=False)


# ------------------------------------------------------------------------------------------ apply


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.data = json.dumps(body).encode() if body is not None else b""

    def read(self) -> bytes:
        return self.data


class RecordingApiClient(kubernetes.client.ApiClient):
    """The real ApiClient (URL, query and header building) with the HTTP round trip recorded instead."""

    def __init__(self, responses: dict[tuple[str, str], tuple[int, Any]] | None = None) -> None:
        super().__init__(kubernetes.client.Configuration(host="https://k8s.test:6443"))
        self.calls: list[dict[str, Any]] = []
        self.responses = responses or {}

    def call_api(self, method: str, url: str, header_params: Any = None, body: Any = None, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, "headers": dict(header_params or {}), "body": body})
        path = url.removeprefix("https://k8s.test:6443").split("?")[0]
        status, answer = self.responses.get((method, path), (200 if method == "PATCH" else 404, {}))
        return FakeResponse(status, answer)


def test_apply_uses_server_side_apply_for_every_object() -> None:
    client = RecordingApiClient()
    spec = make_spec()
    KubernetesBackend(client, namespace="models").apply(spec)
    patches = [c for c in client.calls if c["method"] == "PATCH"]
    assert [c["body"]["kind"] for c in patches] == [m["kind"] for m in render_manifests(spec)]
    for call in patches:
        assert call["headers"]["Content-Type"] == APPLY_PATCH
        assert f"fieldManager={FIELD_MANAGER}" in call["url"] and "force=true" in call["url"]
    urls = [c["url"].split("?")[0].removeprefix("https://k8s.test:6443") for c in patches]
    assert "/apis/apps/v1/namespaces/models/deployments/churn" in urls
    assert "/api/v1/namespaces/models/configmaps/churn-spec" in urls
    assert "/apis/networking.k8s.io/v1/namespaces/models/networkpolicies/churn" in urls
    # Autoscaling is off: a stale HPA is removed (404 is fine).
    deletes = [c["url"] for c in client.calls if c["method"] == "DELETE"]
    assert deletes == ["https://k8s.test:6443/apis/autoscaling/v2/namespaces/models/horizontalpodautoscalers/churn"]


def test_apply_reports_a_refusal() -> None:
    path = "/apis/apps/v1/namespaces/models/deployments/churn"
    client = RecordingApiClient({("PATCH", path): (422, {"message": "spec.template: Invalid value"})})
    with pytest.raises(BackendError, match="Deployment churn failed \\(422\\): spec.template: Invalid value"):
        KubernetesBackend(client).apply(make_spec())


def pod(name: str, *, ready: bool, phase: str = "Running") -> dict:
    return {
        "metadata": {
            "name": name,
            "annotations": {"mlops-console/traffic": '{"7": 90, "8": 10}', "mlops-console/shadow": ""},
        },
        "status": {
            "phase": phase,
            "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"containerID": f"containerd://{name}"}],
        },
    }


def test_observe_reads_pods_of_the_deployment() -> None:
    deployment = render_manifests(make_spec())[2]
    client = RecordingApiClient(
        {
            ("GET", "/apis/apps/v1/namespaces/models/deployments/churn"): (
                200,
                {**deployment, "status": {"readyReplicas": 1}},
            ),
            ("GET", "/api/v1/namespaces/models/pods"): (
                200,
                {
                    "items": [
                        pod("churn-1", ready=True),
                        pod("churn-2", ready=False),
                        pod("churn-3", ready=False, phase="Pending"),
                    ]
                },
            ),
        }
    )
    observed = KubernetesBackend(client, namespace="models").observe("churn")
    assert [r.health for r in observed.replicas] == [
        ReplicaHealth.READY,
        ReplicaHealth.UNHEALTHY,
        ReplicaHealth.STARTING,
    ]
    assert observed.replicas[0].traffic == {"7": 90, "8": 10} and observed.replicas[0].shadow is None
    assert observed.replicas[0].container_id == "containerd://churn-1"
    assert observed.replicas[0].url == "http://10.0.0.5:8080"
    assert observed.detail == "1 of 3 ready"
    assert observed.endpoint == "http://churn.models.svc"
    pods_call = client.calls[-1]
    assert (
        "labelSelector=app.kubernetes.io/name%3Dmodel-server%2Capp.kubernetes.io/instance%3Dchurn" in pods_call["url"]
    )


def test_observe_a_missing_deployment() -> None:
    client = RecordingApiClient({("GET", "/apis/apps/v1/namespaces/default/deployments/gone"): (404, {})})
    assert KubernetesBackend(client).observe("gone").replicas == ()


def test_scale_patches_the_scale_subresource_and_delete_removes_everything() -> None:
    client = RecordingApiClient({("GET", "/apis/apps/v1/namespaces/models/deployments/churn"): (404, {})})
    backend = KubernetesBackend(client, namespace="models")
    backend.scale("churn", 5)
    scale = client.calls[0]
    assert scale["method"] == "PATCH" and scale["url"].endswith("/deployments/churn/scale")
    assert scale["body"] == {"spec": {"replicas": 5}}
    assert scale["headers"]["Content-Type"] == "application/merge-patch+json"
    client.calls.clear()
    backend.delete("churn")
    assert len([c for c in client.calls if c["method"] == "DELETE"]) == 7
