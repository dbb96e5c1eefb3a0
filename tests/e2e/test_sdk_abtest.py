"""The seed's A/B quick start through the SDK, end to end: `ABTest(...).run(duration_days=7)` against a live
console (a gunicorn process of its own on the test database, tests/sdk/conftest.py) starts the test on the
deployment serving the control, a real model server routes keyed requests to the two versions and ships its
events to the console, feedback labels with a planted accuracy gap are posted through the SDK's client, and
`results()` decides for the treatment; `promote_winner()` opens the promotion request and `stop()` sends all
traffic to the winner."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from apps.abtests.models import ABTest as ABTestRow
from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.registry.models import PromotionRequest
from apps.registry.services import model_version_register
from apps.telemetry.models import PredictionLog
from mlops_sdk import ABTest, ValidationError
from tests.e2e.conftest import wait_for
from tests.e2e.test_abtests import reconcile_until_applied
from tests.registry.registry_helpers import FEATURES, SPECIES, iris_frame, sklearn_bundle
from tests.sdk.conftest import ConsoleProcess, console_process, live_console, sdk_client  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REQUESTS = 1_200
CLIENT_THREADS = 4
ACCURACY = (0.75, 0.95)  # control, treatment: the planted gap in the labels


def predict(url: str, keys: list[str]) -> dict[str, tuple[int, str, str]]:
    """One keyed /invocations request per key; key -> (the version id that answered, request id, prediction)."""
    parsed = urlparse(url)
    payload = json.dumps({"dataframe_records": [iris_frame()[0][FEATURES].iloc[0].to_dict()]})
    answers: dict[str, tuple[int, str, str]] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def run(chunk: list[str]) -> None:
        for key in chunk:
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
            try:
                connection.request(
                    "POST", "/invocations", payload, {"Content-Type": "application/json", "X-Request-Key": key}
                )
                response = connection.getresponse()
                body = response.read()
                with lock:
                    if response.status != 200:
                        failures.append(f"{key}: {response.status}")
                        continue
                    answer = json.loads(body)
                    answers[key] = (int(answer["model_version"]), answer["request_id"], answer["predictions"][0])
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
    return answers


def test_the_seed_ab_quick_start_decides_for_the_treatment_and_promotes_it(
    live_console: ConsoleProcess,  # noqa: F811 (the fixture)
    project: Any,
    owner: Any,
    member: Any,
    tmp_path: Path,
) -> None:
    v1 = model_version_register(
        project=project,
        model_name="iris-classifier",
        bundle_path=sklearn_bundle(tmp_path / "v1.zip", seed=0),
        actor=owner,
    )
    v2 = model_version_register(
        project=project,
        model_name="iris-classifier",
        bundle_path=sklearn_bundle(tmp_path / "v2.zip", n_estimators=9, seed=1),
        actor=owner,
    )
    deployment = deployment_services.deployment_create(
        project=project, name="iris-classifier", actor=owner, model_version=v1
    )
    reconcile_until_applied(deployment)
    client = sdk_client(live_console, member, project, backoff=0.05)

    # The console's field messages reach the caller: a treatment equal to the control is refused, nothing starts.
    with pytest.raises(ValidationError) as refused:
        ABTest("iris-classifier:1", "iris-classifier:1", baseline=0.8, client=client).run(duration_days=7)
    assert "must not be the control" in refused.value.fields["treatments"][0]

    # The seed's quick start, nearly unchanged (the versions are the registry's references).
    ab_test = ABTest(
        control_model="iris-classifier:1",
        treatment_model="iris-classifier:2",
        traffic_split=0.5,
        success_metric="accuracy",
        baseline=0.8,
        mde=0.1,
        client=client,
    )
    first = ab_test.run(duration_days=7)
    assert first.decision == "keep running" and not first.is_significant()
    assert ab_test.test.deployment == deployment.pk and ab_test.test.status == "running"
    assert [arm["weight"] for arm in ab_test.test.arms] == [50, 50]

    url = reconcile_until_applied(Deployment.objects.get(pk=deployment.pk)).url
    answers = predict(url, [f"user-{i}" for i in range(REQUESTS)])
    started = ABTestRow.objects.get(pk=ab_test.test.id).started_at
    wait_for(
        lambda: PredictionLog.objects.filter(deployment_id=deployment.pk, created_at__gte=started).count() >= REQUESTS,
        timeout=60,
        what="the model server's events",
    )

    # Labels with the planted gap: each arm's prediction marked right with its arm's probability.
    rng = np.random.default_rng(7)
    labels, correct = [], {v1.pk: [], v2.pk: []}
    for version_id, request_id, prediction in answers.values():
        right = bool(rng.random() < ACCURACY[version_id == v2.pk])
        correct[version_id].append(right)
        wrong = next(species for species in SPECIES if species != prediction)
        labels.append({"request_id": request_id, "label": prediction if right else wrong})
    stored = client.post("/feedback/", labels, params={"project": project.slug, "deployment_id": deployment.pk})
    assert stored["stored"] == REQUESTS and stored["unknown"] == 0 and stored["errors"] == []

    results = ab_test.results()
    observed = np.mean(correct[v2.pk]) - np.mean(correct[v1.pk])
    assert results.decision == "treatment wins" and results.is_significant(), results.summary()
    assert results.winner_version == v2.pk and results.srm_invalid is False
    assert results.difference == pytest.approx(observed, abs=1e-12)
    assert results.lift == pytest.approx(observed / np.mean(correct[v1.pk]), abs=1e-12)
    low, high = results.interval
    assert 0 < low < observed < high
    assert [arm["assigned"] for arm in results.arms] == [len(correct[v1.pk]), len(correct[v2.pk])]
    assert [r.id for r in ab_test.history()] == [first.id, results.id]

    promotion = ab_test.promote_winner(comment="the A/B test says so")
    row = PromotionRequest.objects.get(pk=promotion.id)
    assert (row.version_id, row.target_stage, row.status) == (v2.pk, "production", "open")
    assert "treatment wins" in row.comment and ab_test.refresh().promotion_request == promotion.id

    stopped = ab_test.stop()
    assert stopped.status == "stopped" and stopped.decision == "treatment wins" and stopped.winner == v2.pk
    deployment.refresh_from_db()
    live = [t for t in deployment.targets.all() if not t.shadow and t.weight]
    assert [(t.model_version_id, t.weight) for t in live] == [(v2.pk, 100)]
