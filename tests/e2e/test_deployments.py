"""Deployments end to end: real model server processes on loopback, the real ingest endpoint (a live Django
server on the test database), the reconciler's service called as the beat would call it. Loads are bounded
in requests and in time.

What they measure (asserted; logged at INFO, see them with `-o log_cli=true --log-cli-level=INFO`):
- blue-green under load: failed requests during the switch (must be 0);
- a canary returning 5xx is rolled back by the analysis; a healthy one is promoted to 100%;
- SIGKILL of a model server: the next reconcile restarts it (time to ready);
- a 10% split over 1,000 keyed requests lands within ±3 points; keys keep their version.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse

from apps.core.artifacts import get_artifact_store
from apps.deployments import services
from apps.deployments.backends import get_backend
from apps.deployments.choices import DeploymentEventKind, DeploymentStatus, RolloutPhase
from apps.deployments.models import Deployment
from apps.deployments.tasks import deployment_reconcile_task
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import model_version_register
from apps.telemetry.models import PredictionLog, PredictionRollup
from tests.e2e.conftest import wait_for
from tests.registry.registry_helpers import FEATURES, iris_frame, iris_signature, sklearn_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
logger = logging.getLogger(__name__)

LOAD_SECONDS_LIMIT = 120.0
# Each client pauses between requests: a steady load (~100 requests/s per thread) that leaves the 2 cores
# some room for the reloads the test is about.
LOAD_PAUSE_SECONDS = 0.01


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-bundles")
    return {
        "v1": sklearn_bundle(root / "v1.zip", n_estimators=5, seed=0),
        "v2": sklearn_bundle(root / "v2.zip", n_estimators=9, seed=1),
        "broken": broken_bundle(root / "broken.zip"),
    }


def broken_bundle(path: Path) -> Path:
    """A k-nearest-neighbours model asking for more neighbours than it was fitted on: every predict raises
    (a real 500 from the model, not a 4xx from input validation). skops-safe, no pickle."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    from serving.bundle import save_bundle

    frame, labels = iris_frame()
    model = KNeighborsClassifier(n_neighbors=3).fit(frame, labels)
    model.n_neighbors = 10_000
    save_bundle(
        path,
        flavor="sklearn",
        task="classification",
        signature=iris_signature(),
        input_example=frame.head(3),
        classes=sorted(set(labels)),
        params={},
        pipeline=Pipeline([("model", model)]),
    )
    return path


@pytest.fixture
def console(live_server: Any, settings: LazySettings, tmp_path: Path) -> Iterator[str]:
    """The console's ingest endpoint is the live server; model servers keep their state under tmp_path."""
    settings.CONSOLE_INTERNAL_URL = live_server.url
    settings.DEPLOYMENTS_STATE_DIR = tmp_path / "deployments"
    settings.DEPLOYMENTS_SERVER_WORKERS = 1
    yield live_server.url
    backend = get_backend("local")
    for name in backend.names():
        backend.delete(name)


@pytest.fixture
def versions(project: Any, owner: Any, bundle_files: dict[str, Path]) -> dict[str, ModelVersion]:
    v1 = model_version_register(project=project, model_name="iris", bundle_path=bundle_files["v1"], actor=owner)
    v2 = model_version_register(project=project, model_name="iris", bundle_path=bundle_files["v2"], actor=owner)
    # The registry refuses a model that cannot predict its own example; this one is stored by hand.
    stored = get_artifact_store().put_file(bundle_files["broken"])
    model = RegisteredModel.objects.get(project=project, name="iris")
    broken = ModelVersion.objects.create(
        model=model,
        number=3,
        sha256=stored.sha256,
        size_bytes=stored.size,
        flavor="sklearn",
        task="classification",
        signature=iris_signature(),
        source="upload",
    )
    return {"v1": v1, "v2": v2, "broken": broken}


def ready_url(deployment: Deployment) -> str:
    """The deployment's endpoint: the service port every replica listens on."""
    deployment.refresh_from_db()
    assert deployment.url, f"no ready replica: {deployment.status} {deployment.status_message}"
    replica_urls = {r["url"] for r in deployment.observed["replicas"]}
    assert deployment.url == deployment.observed["endpoint"] and deployment.url not in replica_urls
    return deployment.url


def post(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, str | None, Any]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
        return response.status, response.getheader("X-Model-Version"), json.loads(payload)
    finally:
        connection.close()


@functools.cache
def iris_records() -> list[dict]:
    frame, _ = iris_frame()
    return frame[FEATURES].to_dict("records")


def rows(count: int, offset: int = 0) -> list[dict]:
    records = iris_records()
    return [records[(offset + i) % len(records)] for i in range(count)]


class Load:
    """Client threads sending one-row predictions until stopped (or a request/time bound is reached)."""

    def __init__(self, url: str, *, threads: int = 2, max_requests: int = 5000) -> None:
        self.url, self.max_requests = url, max_requests
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[Any] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_LIMIT
        sent = 0
        while not self._stop.is_set() and time.monotonic() < deadline and sent < self.max_requests:
            sent += 1
            try:
                status, version, _ = post(self.url, "/invocations", {"dataframe_records": rows(1, seed * 1000 + sent)})
            except OSError as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                continue
            with self._lock:
                self.statuses[status] += 1
                self.versions[version or "none"] += 1
            time.sleep(LOAD_PAUSE_SECONDS)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)


def reconcile_until(deployment: Deployment, done: Callable[[Deployment], bool], timeout: float = 120.0) -> Deployment:
    """Run the reconciler as the beat does (here every 0.3 s) until `done` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.deployment_reconcile(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        if done(deployment):
            return deployment
        time.sleep(0.3)
    raise AssertionError(
        f"not reached in {timeout:.0f} s: {deployment.status} {deployment.phase} {deployment.status_message}"
    )


def traffic_of(deployment: Deployment) -> dict[int, int]:
    return {t.model_version_id: t.weight for t in deployment.targets.filter(shadow=False)}


def deploy(project: Any, owner: Any, version: ModelVersion, name: str = "iris") -> Deployment:
    deployment = services.deployment_create(project=project, name=name, actor=owner, model_version=version)
    return reconcile_until(deployment, lambda d: d.status == DeploymentStatus.HEALTHY)


def test_deploy_and_predict_through_both_protocols(console: str, project: Any, owner: Any, versions: dict) -> None:
    deployment = deploy(project, owner, versions["v1"])
    url = ready_url(deployment)
    status, version, answer = post(url, "/invocations", {"dataframe_records": rows(2)})
    assert (status, version) == (200, str(versions["v1"].pk))
    assert answer["predictions"] == ["setosa", "setosa"]
    v2_body = {"inputs": [{"name": f, "shape": [1], "datatype": "FP64", "data": [rows(1)[0][f]]} for f in FEATURES]}
    status, _, answer = post(url, "/v2/models/iris/infer", v2_body)
    assert status == 200 and answer["outputs"][0]["data"] == ["setosa"]
    # Both predictions reach the prediction log through the ingest endpoint, with the deployment's token.
    deadline = time.monotonic() + 15
    while PredictionLog.objects.filter(deployment_id=deployment.pk).count() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    logged = list(PredictionLog.objects.filter(deployment_id=deployment.pk).order_by("created_at"))
    assert len(logged) == 2
    assert {row.model_version_id for row in logged} == {versions["v1"].pk}
    assert logged[0].outputs == ["setosa", "setosa"] and logged[0].status == 200 and logged[0].latency_ms > 0
    assert sum(PredictionRollup.objects.filter(deployment_id=deployment.pk).values_list("requests", flat=True)) == 2
    # The page's "try it" form sends a prediction to the same server and names the version by its number.
    client = Client()
    client.force_login(owner)
    page = client.post(
        reverse("deployments:deployment-try", args=[deployment.pk]),
        {"body": json.dumps({"dataframe_records": rows(1)}), "protocol": "mlflow"},
    )
    answer = page.content.decode()
    assert page.status_code == 200 and "HTTP 200 from v1 (" in answer and "setosa" in answer


def test_blue_green_under_load_fails_no_request(console: str, project: Any, owner: Any, versions: dict) -> None:
    deployment = deploy(project, owner, versions["v1"])
    url = ready_url(deployment)
    with Load(url, threads=2) as load:
        time.sleep(0.5)
        services.deployment_rollout(
            deployment=deployment, model_version=versions["v2"], strategy="blue_green", actor=owner
        )
        deployment = reconcile_until(deployment, lambda d: d.phase == RolloutPhase.DONE and d.status == "healthy")
        time.sleep(0.5)
    logger.info(
        "blue-green under load: %d requests, %s, failures %d", load.total, dict(load.statuses), len(load.failures)
    )
    assert load.failures == [] and set(load.statuses) == {200}, f"{load.statuses} {load.failures[:3]}"
    assert load.versions[str(versions["v1"].pk)] > 0 and load.versions[str(versions["v2"].pk)] > 0
    assert traffic_of(deployment) == {versions["v2"].pk: 100}
    assert ready_url(deployment) == url, "the same servers reloaded gracefully"
    kinds = list(deployment.events.order_by("created_at").values_list("kind", flat=True))
    assert DeploymentEventKind.ROLLOUT_STARTED in kinds and DeploymentEventKind.PROMOTED in kinds


def test_a_failing_canary_is_rolled_back_automatically(console: str, project: Any, owner: Any, versions: dict) -> None:
    deployment = deploy(project, owner, versions["v1"])
    url = ready_url(deployment)
    with Load(url, threads=2):
        services.deployment_rollout(
            deployment=deployment,
            model_version=versions["broken"],
            strategy="canary",
            actor=owner,
            traffic_percentage=30,
            analysis={"window_seconds": 2, "min_requests": 15, "failures_to_rollback": 2},
        )
        deployment = reconcile_until(deployment, lambda d: d.phase == RolloutPhase.ROLLED_BACK)
    assert traffic_of(deployment) == {versions["v1"].pk: 100}
    decisions = deployment.strategy_state["decisions"]
    logger.info("failing canary decisions: %s", [(d["action"], d["reason"]) for d in decisions])
    assert [d["action"] for d in decisions if d["action"] != "pause"][-2:] == ["hold", "rollback"]
    numbers = decisions[-1]["numbers"]
    assert numbers["canary_error_rate"] == 1.0 and numbers["stable_error_rate"] == 0.0
    rolled_back = deployment.events.get(kind=DeploymentEventKind.ROLLED_BACK)
    assert "canary analysis" in rolled_back.message and rolled_back.data["numbers"]["canary"]["requests"] >= 15
    reconcile_until(deployment, lambda d: d.status == DeploymentStatus.HEALTHY)


def test_a_healthy_canary_is_promoted_to_100(console: str, project: Any, owner: Any, versions: dict) -> None:
    deployment = deploy(project, owner, versions["v1"])
    url = ready_url(deployment)
    with Load(url, threads=2):
        services.deployment_rollout(
            deployment=deployment,
            model_version=versions["v2"],
            strategy="canary",
            actor=owner,
            steps=[50, 100],
            # Two-second windows of a few dozen requests on a shared 2-core machine make p99 (their maximum)
            # noise; this test is about promotion on a clean error rate (the latency rule is unit-tested).
            analysis={"window_seconds": 2, "min_requests": 15, "p99_floor_ms": 1000},
        )
        deployment = reconcile_until(deployment, lambda d: d.phase == RolloutPhase.DONE)
    assert traffic_of(deployment) == {versions["v2"].pk: 100}
    actions = [d["action"] for d in deployment.strategy_state["decisions"]]
    assert actions.count("promote") == 1 and "rollback" not in actions
    assert deployment.events.filter(kind=DeploymentEventKind.CANARY_DECISION).exists()
    # One action takes it back to the state before the rollout.
    services.deployment_rollback(deployment=deployment, actor=owner)
    deployment = reconcile_until(deployment, lambda d: d.status == DeploymentStatus.HEALTHY)
    assert traffic_of(deployment) == {versions["v1"].pk: 100}


def _cmdline(pid: int) -> bytes:
    """A process's command line; empty once it exited (a zombie has none)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_killed_model_server_is_restarted_by_the_reconciler(
    console: str, project: Any, owner: Any, versions: dict
) -> None:
    deployment = deploy(project, owner, versions["v1"])
    endpoint = ready_url(deployment)
    before = deployment.observed["replicas"][0]
    os.kill(before["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    # kill() returns before the process is gone; until then the reconciler would still find it alive.
    wait_for(lambda: not _cmdline(before["pid"]), timeout=10, what="the killed master to exit")
    deployment_reconcile_task(deployment.pk)
    deployment.refresh_from_db()
    after = deployment.observed["replicas"][0]
    restart_seconds = time.monotonic() - killed_at
    logger.info("SIGKILL to ready again after one reconcile: %.1f s", restart_seconds)
    assert after["health"] == "ready" and after["pid"] != before["pid"], deployment.status_message
    assert after["url"] == before["url"]
    assert restart_seconds < 30, f"restart took {restart_seconds:.1f} s"
    assert deployment.events.filter(kind=DeploymentEventKind.REPLICA_DIED).exists()
    assert post(after["url"], "/invocations", {"dataframe_records": rows(1)})[0] == 200
    assert ready_url(deployment) == endpoint, "clients keep their address"
    assert post(endpoint, "/invocations", {"dataframe_records": rows(1)})[0] == 200


def test_a_10_percent_split_over_1000_keys_and_sticky_keys(
    console: str, project: Any, owner: Any, versions: dict
) -> None:
    deployment = deploy(project, owner, versions["v1"])
    services.deployment_set_traffic(
        deployment=deployment,
        traffic=[
            {"model_version": versions["v1"].pk, "weight": 90},
            {"model_version": versions["v2"].pk, "weight": 10},
        ],
        actor=owner,
    )
    deployment = reconcile_until(
        deployment, lambda d: d.status == DeploymentStatus.HEALTHY and d.applied_generation == d.generation
    )
    url = ready_url(deployment)
    served = {}
    for i in range(1000):
        status, version, _ = post(
            url, "/invocations", {"dataframe_records": rows(1, i)}, {"X-Request-Key": f"user-{i}"}
        )
        assert status == 200
        served[i] = version
    share = sum(1 for v in served.values() if v == str(versions["v2"].pk)) / len(served)
    logger.info("10%% split over 1000 keyed requests: v2 took %.1f%%", share * 100)
    assert abs(share - 0.10) <= 0.03, f"v2 took {share:.1%}"
    for i in range(0, 1000, 10):
        assert (
            post(url, "/invocations", {"dataframe_records": rows(1, i)}, {"X-Request-Key": f"user-{i}"})[1] == served[i]
        )


def test_a_canary_that_cannot_load_is_rolled_back_and_the_stable_version_keeps_serving(
    console: str, project: Any, owner: Any, versions: dict, tmp_path: Path
) -> None:
    """The local backend's model servers refuse a reload whose candidate cannot load (the archive is not a
    bundle): the reconciler rolls the canary back at once instead of applying the refused spec forever."""
    deployment = deploy(project, owner, versions["v1"])
    url = ready_url(deployment)
    garbage = tmp_path / "not-a-bundle.zip"
    garbage.write_bytes(b"this is not a zip archive")
    stored = get_artifact_store().put_file(garbage)
    unloadable = ModelVersion.objects.create(
        model=versions["v1"].model,
        number=4,
        sha256=stored.sha256,
        size_bytes=stored.size,
        flavor="sklearn",
        task="classification",
        signature=iris_signature(),
        source="upload",
    )
    services.deployment_rollout(deployment=deployment, model_version=unloadable, strategy="canary", actor=owner)
    deployment = reconcile_until(deployment, lambda d: d.phase == RolloutPhase.ROLLED_BACK, timeout=180)
    assert traffic_of(deployment) == {versions["v1"].pk: 100}
    decision = deployment.strategy_state["decisions"][-1]
    assert decision["action"] == "rollback" and "the backend could not apply the rollout" in decision["reason"]
    assert "refused" in deployment.events.get(kind=DeploymentEventKind.ROLLED_BACK).data["error"]
    deployment = reconcile_until(deployment, lambda d: d.status == DeploymentStatus.HEALTHY)
    status, version, _ = post(url, "/invocations", {"dataframe_records": rows(1)})
    assert (status, version) == (200, str(versions["v1"].pk)), "the stable version served throughout"
