"""An A/B test on a real model server: 14,000 keyed requests through a 50/50 test, outcomes posted with a planted
5-point lift, and the readout decides for the treatment with no sample-ratio mismatch; then a second test whose
traffic leaves out 10 % of the keys the server would send to the control sees the SRM alarm.

The model server (a local backend process) routes each request by its X-Request-Key and ships its prediction
events to the live console, from which the readout counts assignments. Outcomes go through the API as a client
would post them."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from django.conf import LazySettings
from django.test import Client

from apps.abtests.models import ABTest
from apps.deployments import services as deployment_services
from apps.deployments.backends import get_backend
from apps.deployments.choices import DeploymentStatus
from apps.deployments.models import Deployment
from apps.registry.services import model_version_register
from apps.telemetry.models import PredictionLog
from serving.app import TrafficSplit
from tests.conftest import client_for
from tests.e2e.conftest import wait_for
from tests.registry.registry_helpers import FEATURES, iris_frame, sklearn_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
logger = logging.getLogger(__name__)

# The sequential test (planned at 5,262 units) decides for the treatment once the difference exceeds 2.44 points
# at 14,000 units: with the planted 5 points it misses with probability 6e-4 (normal approximation; 1 - 0.99975
# in 4,000 simulated draws of outcomes), below the 1e-3 false alarm the SRM check accepts. These keys and seed
# give p = 1.4e-7 and an SRM p of 0.025.
REQUESTS = 14_000
CLIENT_THREADS = 8
OUTCOME_BATCH = 5_000
RATES = (0.30, 0.35)  # control, treatment: the planted 5-point lift
# Keys offered in the skewed test: 10 % of the control's dropped leaves 7,595 requests (SRM p = 1.6e-4 with these keys).
SKEW_CANDIDATES = 8_000


@pytest.fixture
def console(live_server: Any, settings: LazySettings, tmp_path: Path) -> Iterator[str]:
    settings.CONSOLE_INTERNAL_URL = live_server.url
    settings.DEPLOYMENTS_STATE_DIR = tmp_path / "deployments"
    settings.DEPLOYMENTS_SERVER_WORKERS = 2
    yield live_server.url
    backend = get_backend("local")
    for name in backend.names():
        backend.delete(name)


def reconcile_until_applied(deployment: Deployment, timeout: float = 120.0) -> Deployment:
    def applied() -> Deployment | None:
        deployment_services.deployment_reconcile(deployment_id=deployment.pk)
        deployment.refresh_from_db()
        settled = (
            deployment.status == DeploymentStatus.HEALTHY and deployment.applied_generation == deployment.generation
        )
        return deployment if settled and deployment.url else None

    return wait_for(applied, timeout=timeout, interval=0.3, what="the deployment to apply its split")


def send(url: str, keys: list[str]) -> dict[str, str]:
    """One /invocations request per key, from client threads; key -> the version header that answered."""
    parsed = urlparse(url)
    payload = json.dumps({"dataframe_records": [iris_frame()[0][FEATURES].iloc[0].to_dict()]})
    served: dict[str, str] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def run(chunk: list[str]) -> None:
        for key in chunk:
            # A new connection per request: the model server closes each after its answer.
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
            try:
                connection.request(
                    "POST", "/invocations", payload, {"Content-Type": "application/json", "X-Request-Key": key}
                )
                response = connection.getresponse()
                response.read()
                with lock:
                    if response.status == 200:
                        served[key] = response.getheader("X-Model-Version")
                    else:
                        failures.append(f"{key}: {response.status}")
            except OSError as exc:
                with lock:
                    failures.append(f"{key}: {exc!r}")
            finally:
                connection.close()

    threads = [threading.Thread(target=run, args=(keys[i::CLIENT_THREADS],)) for i in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    return served


def logged(deployment: Deployment, since: Any) -> int:
    return PredictionLog.objects.filter(deployment_id=deployment.pk, shadow=False, created_at__gte=since).count()


def post_outcomes(api: Any, abtest: ABTest, keys: list[str], arms: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = [{"assignment_key": key, "conversion": int(rng.random() < RATES[arms[key]])} for key in keys]
    for start in range(0, len(items), OUTCOME_BATCH):
        answer = api.post(f"/api/v1/abtests/{abtest.pk}/outcomes/", items[start : start + OUTCOME_BATCH], format="json")
        assert answer.status_code == 200, answer.json()
        assert answer.json()["unknown"] == 0 and answer.json()["errors"] == []


def test_a_planted_lift_wins_and_a_planted_skew_raises_the_srm_alarm(
    console: str, project: Any, owner: Any, member: Any, tmp_path: Path
) -> None:
    v1 = model_version_register(
        project=project, model_name="iris", bundle_path=sklearn_bundle(tmp_path / "v1.zip", seed=0), actor=owner
    )
    v2 = model_version_register(
        project=project,
        model_name="iris",
        bundle_path=sklearn_bundle(tmp_path / "v2.zip", n_estimators=9, seed=1),
        actor=owner,
    )
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=v1)
    reconcile_until_applied(deployment)
    api = client_for(member)

    def run_test(name: str, keys_of: Any) -> tuple[ABTest, dict[str, str]]:
        created = api.post(
            "/api/v1/abtests/",
            {
                "deployment": deployment.pk,
                "name": name,
                "control": v1.pk,
                "treatments": [v2.pk],
                "split": [50, 50],
                "primary_metric": "conversion",
                "baseline": RATES[0],
                "mde": 0.05,
                "guardrails": [{"metric": "error_rate", "margin": 0.01}],
            },
            format="json",
        )
        assert created.status_code == 201, created.json()
        abtest = ABTest.objects.get(pk=created.json()["id"])
        assert api.post(f"/api/v1/abtests/{abtest.pk}/start/", {}, format="json").status_code == 200
        url = reconcile_until_applied(deployment).url
        abtest.refresh_from_db()
        keys = keys_of(abtest)
        started = time.monotonic()
        served = send(url, keys)
        elapsed = time.monotonic() - started
        logger.info("%s: %d keyed requests in %.1f s (%.0f/s)", name, len(keys), elapsed, len(keys) / elapsed)
        wait_for(lambda: logged(deployment, abtest.started_at) >= len(keys), timeout=60, what="the events")
        return abtest, served

    # 1. 14,000 keys through 50/50, a 5-point lift planted in the outcomes.
    keys = [f"user-{i}" for i in range(REQUESTS)]
    abtest, served = run_test("planted lift", lambda _: keys)
    versions = {str(v1.pk): 0, str(v2.pk): 1}
    arms = {key: versions[version] for key, version in served.items()}
    split = TrafficSplit((50, 50))
    assert all(arms[key] == split.pick(key) for key in keys), "the server routes as the console assigns"
    post_outcomes(api, abtest, keys, arms, seed=1)
    readout = api.post(f"/api/v1/abtests/{abtest.pk}/readout/").json()
    assigned = {arm["label"]: arm["assigned"] for arm in readout["result"]["arms"]}
    logger.info("lift readout: %s (%s); assigned %s", readout["decision"], readout["reason"], assigned)
    assert sum(assigned.values()) == REQUESTS
    assert readout["srm_invalid"] is False and readout["srm_p_value"] > 0.001
    assert readout["decision"] == "treatment wins" and readout["result"]["winner_version"] == v2.pk
    stopped = api.post(f"/api/v1/abtests/{abtest.pk}/stop/", {}, format="json").json()
    assert stopped["winner"] == v2.pk

    # 2. A skew: the keys the server sends to the control lose one in ten (as lost events or a non-sticky key
    # would lose them), so control and treatment see 45:50 of the traffic instead of 50:50.
    def skewed(_: ABTest) -> list[str]:
        candidates = [f"visitor-{i}" for i in range(SKEW_CANDIDATES)]
        return [key for i, key in enumerate(candidates) if split.pick(key) == 1 or i % 10 != 0]

    skewed_test, served = run_test("planted skew", skewed)
    arms = {key: versions[version] for key, version in served.items()}
    post_outcomes(api, skewed_test, list(served), arms, seed=2)
    readout = api.post(f"/api/v1/abtests/{skewed_test.pk}/readout/").json()
    logger.info("skew readout: %s, SRM p = %s", readout["decision"], readout["srm_p_value"])
    assert readout["srm_invalid"] is True and readout["srm_p_value"] < 0.001
    assert readout["decision"] == "invalid"
    browser = Client()
    browser.force_login(member)
    page = browser.get(f"/abtests/{skewed_test.pk}/").content.decode()
    assert 'data-testid="srm-alert"' in page and "readout invalid" in page
