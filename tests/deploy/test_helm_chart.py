"""The console's Helm chart (deploy/helm/mlops-console), rendered by Helm's own template engine.

No cluster can run here, so the chart is rendered offline (`helm template`) through helm-python-sdk, which binds
Helm's Go SDK (a shared library inside the wheel; no helm binary needed), and every manifest is validated
against the Kubernetes 1.30 schema in strict mode, as the deployment backend's own manifests are
(tests/worker/test_deploy_kubernetes.py).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.required_services import require_service
from tests.worker.test_deploy_kubernetes import RecordingApiClient, make_spec, render_manifests
from worker.deployments.kube import ACCESS_LABEL, KubernetesBackend, KubernetesOptions

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mlops-console"
RELEASE, NAMESPACE = "mlops-console", "mlops"
SECRET = {"secretKey": "a-long-random-test-secret"}
EXTERNAL = {**SECRET, "databaseUrl": "postgres://mlops:pw@db.internal:5432/mlops", "brokerUrl": "redis://r:6379/0"}
TRIAL = {**SECRET, "postgresql": {"enabled": True, "password": "trial-pw"}, "redis": {"enabled": True}}
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
SCENARIOS = {"defaults": EXTERNAL, "production": PRODUCTION, "trial": TRIAL}


@pytest.fixture(scope="module")
def helm() -> Any:
    try:
        import helm_python
    except ImportError:
        require_service("helm-python-sdk (Helm's engine) is not installed: pip install -r requirements.txt")
    return helm_python


def render(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def named(manifests: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == RELEASE + suffix]
    return found


def pod_specs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]
        for m in manifests
        if m["kind"] in {"Deployment", "StatefulSet", "Job"}
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_for_kubernetes_1_30(helm: Any, scenario: str) -> None:
    manifests = render(helm, SCENARIOS[scenario])
    for manifest in manifests:
        kubernetes_validate.validate(manifest, desired_version="1.30", strict=True)
    names = {(m["kind"], m["metadata"]["name"].removeprefix(f"{RELEASE}-")) for m in manifests}
    assert {("Deployment", "web"), ("Deployment", "worker"), ("Deployment", "beat"), ("Job", "migrate")} <= names
    assert ("Service", "web") in names and ("NetworkPolicy", "web") in names
    trial = {("StatefulSet", "postgresql"), ("Deployment", "redis")}
    assert trial <= names if scenario == "trial" else not trial & names


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_chart_lints_clean(helm: Any, scenario: str) -> None:
    report = helm.lint(str(CHART), SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


def test_production_rendering_fails_without_a_secret_key(helm: Any) -> None:
    values = {key: value for key, value in EXTERNAL.items() if key != "secretKey"}
    with pytest.raises(helm.HelmRenderError, match="secretKey is required"):
        render(helm, values)
    with pytest.raises(helm.HelmRenderError, match="databaseUrl is required"):
        render(helm, {"secretKey": "s", "brokerUrl": "redis://r:6379/0"})
    with pytest.raises(helm.HelmRenderError, match="postgresql.password is required"):
        render(helm, {**TRIAL, "postgresql": {"enabled": True}})


def test_dev_mode_renders_without_a_secret_key_and_turns_debug_on(helm: Any) -> None:
    values = {"devMode": True, "postgresql": {"enabled": True, "password": "pw"}, "redis": {"enabled": True}}
    config = named(render(helm, values), "ConfigMap", "-config")
    assert config["data"]["DEBUG"] == "1"
    assert named(render(helm, EXTERNAL), "ConfigMap", "-config")["data"]["DEBUG"] == "0"


def test_every_setting_the_console_reads_is_passed(helm: Any) -> None:
    manifests = render(helm, EXTERNAL)
    passed = set(named(manifests, "ConfigMap", "-config")["data"]) | set(
        named(manifests, "Secret", "-env")["stringData"]
    )
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    # The demo account is `make run`'s; the Docker backend's engine and base image have no use on a cluster.
    not_for_kubernetes = {
        "DEMO_ADMIN_USERNAME",
        "DEMO_ADMIN_PASSWORD",
        "DEPLOYMENTS_DOCKER_URL",
        "DEPLOYMENTS_DOCKER_BASE_IMAGE",
    }
    assert documented - not_for_kubernetes <= passed
    secret = named(manifests, "Secret", "-env")["stringData"]
    assert set(secret) == {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "EMAIL_HOST_PASSWORD", "METRICS_TOKEN"}
    config = named(manifests, "ConfigMap", "-config")["data"]
    assert not set(config) & set(secret)
    assert config["DEPLOYMENTS_KUBE_CONSOLE_NAMESPACE"] == NAMESPACE
    assert config["CONSOLE_INTERNAL_URL"] == f"http://{RELEASE}-web.{NAMESPACE}.svc:80"


def test_an_existing_secret_replaces_the_charts_secret(helm: Any) -> None:
    manifests = render(helm, PRODUCTION)
    assert not [m for m in manifests if m["kind"] == "Secret"]
    for name, pod in pod_specs(manifests).items():
        refs = [
            source["secretRef"]["name"] for c in pod["containers"] for source in c["envFrom"] if "secretRef" in source
        ]
        assert refs == ["mlops-console-env"], name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_non_root_read_only_and_without_capabilities(helm: Any, scenario: str) -> None:
    for name, pod in pod_specs(render(helm, SCENARIOS[scenario])).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            # Whatever must be writable is a volume: a read-only root would otherwise break the process.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts or "/data" in mounts, name


def test_console_pods_write_only_to_their_volumes_and_share_the_artifacts_claim(helm: Any) -> None:
    manifests = render(helm, EXTERNAL)
    config = named(manifests, "ConfigMap", "-config")["data"]
    claim = named(manifests, "PersistentVolumeClaim", "-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for component in ("web", "worker"):
        pod = named(manifests, "Deployment", f"-{component}")["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts[config["ARTIFACT_ROOT"]] == "artifacts"
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert "emptyDir" in volumes[mounts[config["VAR_DIR"]]] and "emptyDir" in volumes[mounts["/tmp"]]


def test_web_probes_health_and_readiness(helm: Any) -> None:
    manifests = render(helm, EXTERNAL)
    web = named(manifests, "Deployment", "-web")["spec"]["template"]["spec"]["containers"][0]
    assert web["command"][:2] == ["gunicorn", "mlops_console.wsgi:application"]
    # The kubelet asks for a pod IP, which Django refuses (400) unless the Host is an allowed one.
    host = [{"name": "Host", "value": "localhost"}]
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "httpHeaders": host}
    assert web["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "httpHeaders": host}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "httpHeaders": host}
    allowed = named(manifests, "ConfigMap", "-config")["data"]["ALLOWED_HOSTS"]
    assert allowed == "mlops.example.com,localhost"
    assert web["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_migrations_run_as_a_hook_after_the_settings_exist(helm: Any) -> None:
    manifests = render(helm, EXTERNAL)
    job = named(manifests, "Job", "-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "manage.py",
        "migrate",
        "--noinput",
    ]
    for kind, suffix in [("ConfigMap", "-config"), ("Secret", "-env")]:
        annotations = named(manifests, kind, suffix)["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    # The built-in Postgres is created with the release, so a first install migrates after it.
    trial_job = named(render(helm, TRIAL), "Job", "-migrate")
    assert trial_job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_rbac_is_namespaced_to_the_model_namespace(helm: Any) -> None:
    manifests = render(helm, PRODUCTION)
    assert not [m for m in manifests if m["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    role, binding = named(manifests, "Role", "-model-servers"), named(manifests, "RoleBinding", "-model-servers")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == PRODUCTION["modelNamespace"]
    account = named(manifests, "ServiceAccount", "")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    pods = pod_specs(manifests)
    # Only the worker (the deployment backend) gets the token.
    tokens = {name.removeprefix(f"{RELEASE}-") for name, pod in pods.items() if pod.get("automountServiceAccountToken")}
    assert tokens == {"worker"}


PATH = re.compile(
    r"^/(?:api|apis/(?P<group>[^/]+))/v[0-9a-z]+/namespaces/(?P<namespace>[^/]+)/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>[a-z]+))?)?$"
)
VERBS = {"PATCH": "patch", "DELETE": "delete", "PUT": "update", "POST": "create"}


def requests_of_the_backend() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every call the Kubernetes backend makes, through the real ApiClient."""
    deployment = render_manifests(make_spec())[2]
    client = RecordingApiClient(
        {
            ("GET", "/apis/apps/v1/namespaces/models/deployments/churn"): (200, deployment),
            ("GET", "/api/v1/namespaces/models/pods"): (200, {"items": []}),
        }
    )
    backend = KubernetesBackend(client, namespace="models")
    backend.apply(make_spec())
    backend.apply(make_spec(autoscale_min=2, autoscale_max=10))
    backend.scale("churn", 5)
    backend.delete("churn")
    needed = set()
    for call in client.calls:
        path = call["url"].removeprefix("https://k8s.test:6443").partition("?")[0]
        match = PATH.match(path)
        assert match and match["namespace"] == "models", path
        resource = match["resource"] + (f"/{match['subresource']}" if match["subresource"] else "")
        verb = VERBS.get(call["method"]) or ("get" if match["name"] else "list")
        needed.add((match["group"] or "", resource, verb))
    return needed


def test_the_role_grants_exactly_what_the_kubernetes_backend_does(helm: Any) -> None:
    role = named(render(helm, EXTERNAL), "Role", "-model-servers")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == requests_of_the_backend()


def test_network_policies_open_the_web_port_to_the_model_servers(helm: Any) -> None:
    manifests = render(helm, PRODUCTION)
    web_policy = named(manifests, "NetworkPolicy", "-web")["spec"]
    sources = [peer for rule in web_policy["ingress"] for peer in rule.get("from", [])]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}}} in sources
    assert PRODUCTION["networkPolicy"]["webIngressFrom"][0] in sources
    no_ingress = named(manifests, "NetworkPolicy", "-no-ingress")["spec"]
    assert no_ingress["policyTypes"] == ["Ingress"] and "ingress" not in no_ingress
    worker_ports = {
        p["port"]
        for rule in named(manifests, "NetworkPolicy", "-worker-egress")["spec"]["egress"]
        for p in rule["ports"]
    }
    assert {443, 6443} <= worker_ports
    egress = named(manifests, "NetworkPolicy", "-egress")["spec"]["egress"]
    database = next(rule for rule in egress if rule["ports"][0]["port"] == 5432)
    assert database["to"] == PRODUCTION["networkPolicy"]["databasePeers"]


def test_console_pods_carry_the_labels_the_model_servers_policy_admits(helm: Any) -> None:
    # The backend's NetworkPolicy lets model servers reach pods with these labels, and accept traffic from
    # pods labelled ACCESS_LABEL (the web pods proxy predictions, the worker checks canaries).
    labels = dict(KubernetesOptions().console_pod_labels)
    manifests = render(helm, EXTERNAL)
    for component in ("web", "worker"):
        pod_labels = named(manifests, "Deployment", f"-{component}")["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= pod_labels.items()
        assert pod_labels[ACCESS_LABEL] == "true"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_web_container_serves_its_probes_with_the_charts_settings(helm: Any, tmp_path: Path) -> None:
    """The web container's command and the chart's settings, run here: the probes answer as the kubelet asks."""
    manifests = render(helm, EXTERNAL)
    env = {
        **os.environ,
        **named(manifests, "ConfigMap", "-config")["data"],
        **named(manifests, "Secret", "-env")["stringData"],
        # This machine's services and writable paths in place of the cluster's.
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "VAR_DIR": str(tmp_path / "var"),
        "DEPLOYMENTS_STATE_DIR": str(tmp_path / "var" / "deployments"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    container = named(manifests, "Deployment", "-web")["spec"]["template"]["spec"]["containers"][0]
    command = list(container["command"])
    port = free_port()
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    command[command.index("--workers") + 1] = "1"
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:

        def get(path: str, host: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path, headers={"Host": host})
            return connection.getresponse()

        deadline = time.monotonic() + 60
        while True:
            try:
                health = get("/healthz", "localhost")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.5)
        assert health.status == 200 and health.getheader("X-Request-Id")
        # Neither probe is redirected to https (SECURE_SSL_REDIRECT is on) and readiness reaches the database.
        ready = get("/readyz", "localhost")
        assert ready.status == 200 and json.loads(ready.read()) == {"status": "ok", "database": "ok"}
        # What the kubelet would send without the chart's Host header: a pod IP, which Django refuses.
        assert get("/healthz", f"10.1.2.3:{port}").status == 400
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # LOG_FORMAT=json (the chart's default): Django's and gunicorn's own lines aside, the console's lines are JSON.
    refused = [line for line in stderr.splitlines() if "Invalid HTTP_HOST header" in line]
    assert refused and json.loads(refused[0])["level"] == "ERROR"
