"""The ingest API and service: token authentication, raw rows by column, rollups in the same transaction."""

from __future__ import annotations

import ast
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from apps.core.artifacts import get_artifact_store
from apps.core.models import APIToken
from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.telemetry import authentication, selectors
from apps.telemetry.authentication import ingest_source_for_token
from apps.telemetry.models import BUCKET_FIELDS, NO_VERSION, PredictionLog, PredictionRollup
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/ingest/predictions/"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(project: Any, owner: Any) -> Deployment:
    """Serving its model's version id 7; ids 8 and 12 are the model's too (the events below name them)."""
    model = RegisteredModelFactory(project=project, name="iris")
    version, *_ = (ModelVersionFactory(model=model, number=n, pk=pk) for n, pk in ((1, 7), (2, 8), (3, 12)))
    return deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)


def source(deployment: Deployment) -> IngestSource:
    """What the ingest API gets for the deployment's token (the resolver deployments registers)."""
    return ingest_source_for_token(deployment.ingest_token())


def event(deployment: Deployment, request_id: str, **changes: Any) -> dict:
    return {
        "request_id": request_id,
        "deployment_id": deployment.pk,
        "version_id": 7,
        "shadow": False,
        "inputs": {"x": [1, 2], "y": ["a", None]},
        "outputs": ["a", "b"],
        "probabilities": None,
        "latency_ms": 1.5,
        "status": 200,
        "error": None,
        "request_key": "k",
        "timestamp": "2026-11-28T09:14:38.164214+00:00",
        **changes,
    }


def token(deployment: Deployment) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {deployment.ingest_token()}"}


def test_ingest_takes_only_the_deployment_token_and_counts_once(deployment: Deployment, member: Any, api: Any) -> None:
    body = {
        "events": [
            event(deployment, "r1"),
            event(deployment, "r2", status=500, error="boom"),
            event(deployment, "r1", shadow=True, version_id=8),
        ]
    }
    assert api.post(URL, body, format="json").status_code == 401
    APIToken.objects.create(user=member, name="x", prefix="mlc_x", key_hash=APIToken.hash_key("mlc_k"))
    assert api.post(URL, body, format="json", HTTP_AUTHORIZATION="Bearer mlc_k").status_code == 401
    first = api.post(URL, body, format="json", **token(deployment))
    assert first.status_code == 202 and first.json() == {"accepted": 3}
    again = api.post(URL, body, format="json", **token(deployment))
    assert again.status_code == 202 and again.json() == {"accepted": 0}, "a re-sent batch is not stored again"
    rows = PredictionLog.objects.filter(deployment_id=deployment.pk)
    assert rows.count() == 3 and set(rows.values_list("project_id", flat=True)) == {deployment.project_id}
    failed = rows.get(request_id="r2")
    assert (failed.status, failed.error, failed.model_version_id, failed.latency_ms) == (500, "boom", 7, 1.5)
    assert failed.created_at == datetime(2026, 11, 28, 9, 14, 38, 164214, tzinfo=UTC)
    # Inputs are stored by column, as the servers send them, and read back by row.
    assert failed.inputs == {"x": [1, 2], "y": ["a", None]}
    assert selectors.input_rows(failed.inputs) == [{"x": 1, "y": "a"}, {"x": 2, "y": None}]
    # The rollups count each event once, in the event's minute, live and shadow apart.
    live = PredictionRollup.objects.get(deployment_id=deployment.pk, model_version_id=7, shadow=False)
    assert (live.minute, live.requests, live.errors, live.latency_count) == (
        datetime(2026, 11, 28, 9, 14, tzinfo=UTC),
        2,
        1,
        2,
    )
    assert live.latency_sum_ms == 3.0 and live.bucket_01 == 2, "1.5 ms falls in the (1, 2.5] bucket"
    assert PredictionRollup.objects.get(shadow=True).model_version_id == 8


def test_events_of_another_deployment_are_ignored_and_bad_ones_refused(deployment: Deployment, api: Any) -> None:
    foreign = api.post(
        URL, {"events": [event(deployment, "r9", deployment_id=deployment.pk + 1)]}, format="json", **token(deployment)
    )
    assert foreign.json() == {"accepted": 0}
    cases = [
        ({"events": [{"no": "id"}]}, "events[0] must be an object with a request_id"),
        ({"events": "x"}, "Must be a list"),
        ({"events": [event(deployment, "r", latency_ms="slow")]}, "non-numeric"),
        ({"events": [event(deployment, "r", inputs=[{"x": 1}])]}, "events[0].inputs"),
        ({"events": [event(deployment, "r", inputs={"x": [1, 2], "y": [1]})]}, "events[0].inputs"),
        ({"events": [event(deployment, "ok"), event(deployment, "r", inputs={"x": 1})]}, "events[1].inputs"),
    ]
    for body, message in cases:
        refused = api.post(URL, body, format="json", **token(deployment))
        assert refused.status_code == 400 and message in refused.json()["events"][0], body
    not_json = api.post(URL, b"{nope", content_type="application/json", **token(deployment))
    assert not_json.status_code == 400
    assert not PredictionLog.objects.exists() and not PredictionRollup.objects.exists(), "nothing half-written"


def test_odd_values_are_stored_not_refused(deployment: Deployment) -> None:
    events = [
        event(deployment, "tab\there", error="line\nbreak\\ and a NUL\x00", version_id="12", request_key=None),
        event(deployment, "no-version", version_id=None, latency_ms=None, status=503, timestamp=""),
        event(
            deployment, "slow", version_id=None, latency_ms=60_000, inputs=None, outputs={"k": "\\\t\n"}, timestamp=None
        ),
    ]
    assert predictions_ingest(source=source(deployment), events=events).accepted == 3
    stored = {row.request_id: row for row in PredictionLog.objects.all()}
    assert stored["tab\there"].error == "line\nbreak\\ and a NUL" and stored["tab\there"].model_version_id == 12
    assert stored["slow"].outputs == {"k": "\\\t\n"} and stored["slow"].model_version_id is None
    none = PredictionRollup.objects.get(model_version_id=NO_VERSION)
    assert (none.requests, none.errors, none.latency_count, none.bucket_13) == (2, 1, 1, 1)


def test_an_impossible_timestamp_or_a_foreign_version_is_refused_alone_and_reported(
    deployment: Deployment, project: Any, api: Any
) -> None:
    # An explicit id, like the fixture's: the id sequence may be anywhere after earlier tests, 8 included.
    other_model = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="other"), number=1, pk=13)
    bad = [
        ("leap", {"timestamp": "2024-02-30T00:00:00"}, "timestamp", "'2024-02-30T00:00:00' is not a valid ISO 8601"),
        ("ahead", {"timestamp": "0001-01-01T00:00:00+05:00"}, "timestamp", "is not a valid ISO 8601 date and time"),
        ("garbage", {"timestamp": "garbage"}, "timestamp", "'garbage' is not a valid"),
        ("foreign", {"version_id": other_model.pk}, "version_id", "is not a version of this deployment's model"),
        ("unknown", {"version_id": 10**12}, "version_id", "is not a version of this deployment's model"),
        ("odd", {"version_id": "²"}, "version_id", "'²' is not a version"),
        ("bool", {"version_id": True}, "version_id", "'True' is not a version"),
    ]
    events = [event(deployment, "good-1")]
    events += [event(deployment, request_id, **change) for request_id, change, _, _ in bad]
    events += [event(deployment, "good-2", version_id="8")]

    response = api.post(URL, {"events": events}, format="json", **token(deployment))

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["request_id"], r["field"]) for r in body["rejected"]] == [
        (index, request_id, field) for index, (request_id, _, field, _) in enumerate(bad, start=1)
    ]
    for rejected, (_, _, _, message) in zip(body["rejected"], bad, strict=True):
        assert message in rejected["error"], rejected
    stored = dict(PredictionLog.objects.values_list("request_id", "model_version_id"))
    assert stored == {"good-1": 7, "good-2": 8}, "the rest of the batch is stored"
    assert sum(PredictionRollup.objects.values_list("requests", flat=True)) == 2


def test_rollups_add_up_across_batches_and_quantiles_come_from_the_histogram(deployment: Deployment) -> None:
    now = datetime.now(UTC).replace(second=30)
    batches = [
        [
            event(deployment, f"{batch}-{i}", latency_ms=float(i % 100) + 0.5, timestamp=now.isoformat())
            for i in range(batch * 100, batch * 100 + 100)
        ]
        for batch in range(3)
    ]
    for batch in batches:
        predictions_ingest(source=source(deployment), events=batch)
    rollup = PredictionRollup.objects.get()
    assert rollup.requests == 300 and sum(getattr(rollup, name) for name in BUCKET_FIELDS) == 300
    stats = selectors.version_window_stats(
        deployment_id=deployment.pk, version_ids=[7, 99], since=now, until=now + timedelta(minutes=1)
    )
    # Latencies 0.5 … 99.5 ms, three times: the true p50 is 50 ms; the histogram puts it in (25, 50].
    window = stats[7]
    assert (window.requests, window.errors, window.mean_ms) == (300, 0, pytest.approx(50.0))
    assert 25 < window.p50_ms <= 50 and 50 < window.p90_ms <= 100 and 50 < window.p99_ms <= 100
    assert window.p50_ms <= window.p90_ms <= window.p99_ms
    assert stats[99].requests == 0 and stats[99].p99_ms is None and stats[99].error_rate is None


def test_request_rate_and_counts_read_whole_minutes(deployment: Deployment) -> None:
    now = datetime(2026, 12, 1, 12, 0, 40, tzinfo=UTC)
    last_minute = (now - timedelta(seconds=60)).isoformat()
    events = [event(deployment, f"r{i}", timestamp=last_minute) for i in range(150)]
    events += [event(deployment, f"s{i}", shadow=True, timestamp=now.isoformat()) for i in range(5)]
    predictions_ingest(source=source(deployment), events=events)
    assert selectors.request_rate(deployment_id=deployment.pk, seconds=60, now=now) == 2.5
    since = now - timedelta(minutes=5)
    assert selectors.prediction_counts(deployment_id=deployment.pk, since=since) == {"live": 150, "shadow": 5}


def test_shadow_pairs_match_answers_by_request(deployment: Deployment) -> None:
    predictions_ingest(
        source=source(deployment),
        events=[
            event(deployment, "a", outputs=[1]),
            event(deployment, "a", shadow=True, version_id=8, outputs=[2]),
            event(deployment, "b", shadow=True, version_id=8, outputs=[3]),
        ],
    )
    pairs = selectors.shadow_pairs(deployment_id=deployment.pk, shadow_version_id=8)
    assert sorted(pairs, key=str) == sorted([([1], [2]), (None, [3])], key=str)


def hold_uncommitted(
    deployment: Deployment, request_id: str, version_id: int = 7
) -> tuple[threading.Thread, threading.Event]:
    """Another server's transaction that has stored an event and not committed yet; commits on `release`."""
    inside, release = threading.Event(), threading.Event()

    def run() -> None:
        with transaction.atomic():
            predictions_ingest(source=source(deployment), events=[event(deployment, request_id, version_id=version_id)])
            inside.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert inside.wait(10)
    return thread, release


@pytest.mark.django_db(transaction=True)
def test_a_batch_racing_its_copies_is_stored_once(deployment: Deployment, api: Any) -> None:
    """A server re-sends a batch before the first attempt committed: the copy waits, then keeps what is new."""
    first, release = hold_uncommitted(deployment, "r1")
    threading.Timer(0.5, release.set).start()  # the copy blocks on the unique index until then
    copy = api.post(
        URL, {"events": [event(deployment, "r1"), event(deployment, "r2")]}, format="json", **token(deployment)
    )
    first.join(10)
    assert copy.status_code == 202 and copy.json() == {"accepted": 1}
    assert PredictionLog.objects.count() == 2 and PredictionRollup.objects.get().requests == 2

    # Raced twice (the second look finds another uncommitted copy): 503, which servers retry.
    # (Another version for r4: transactions adding to the same minute's rollup row wait for each other.)
    holders = [hold_uncommitted(deployment, "r3"), hold_uncommitted(deployment, "r4", version_id=8)]
    threading.Timer(0.5, holders[0][1].set).start()
    threading.Timer(1.0, holders[1][1].set).start()
    body = {"events": [event(deployment, "r3"), event(deployment, "r4", version_id=8)]}
    raced = api.post(URL, body, format="json", **token(deployment))
    for thread, _ in holders:
        thread.join(10)
    assert raced.status_code == 503 and "send it again" in raced.json()["detail"]
    retry = api.post(URL, body, format="json", **token(deployment))
    assert retry.status_code == 202 and retry.json() == {"accepted": 0}
    assert PredictionLog.objects.count() == 4
    assert [rollup.requests for rollup in PredictionRollup.objects.order_by("model_version_id")] == [3, 1]


def test_telemetry_imports_no_app_above_it() -> None:
    above = ("apps.datasets", "apps.experiments", "apps.registry", "apps.deployments")
    for path in (ROOT / "apps" / "telemetry").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not [name for name in names if name.startswith(above)], path


def test_the_servers_url_the_route_and_the_docs_agree(settings: Any) -> None:
    settings.CONSOLE_INTERNAL_URL = "http://console:8000"
    assert deployment_services.ingest_url() == "http://console:8000/api/v1/ingest/predictions/"
    assert (
        '"console_url": "https://console.example/api/v1/ingest/predictions/"'
        in (ROOT / "docs" / "model-server.md").read_text()
    )


def test_the_artifact_endpoint_takes_the_same_token(deployment: Deployment, api: Any) -> None:
    version = deployment.targets.get().model_version
    stored = get_artifact_store().put_bytes(b"bundle bytes")
    type(version).objects.filter(pk=version.pk).update(sha256=stored.sha256)
    url = f"/api/v1/ingest/artifacts/{stored.sha256}/"
    assert api.get(url).status_code == 401
    assert api.get(url, HTTP_AUTHORIZATION="Bearer mld_unknown").status_code == 401
    served = api.get(url, **token(deployment))
    assert served.status_code == 200 and b"".join(served.streaming_content) == b"bundle bytes"
    assert api.get(f"/api/v1/ingest/artifacts/{'0' * 64}/", **token(deployment)).status_code == 404


def test_a_token_is_resolved_once_per_cache_period(
    deployment: Deployment, api: Any, django_assert_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving costs two queries per batch; a process keeps the answer, and a deleted deployment's token is
    refused once the cache period has passed."""
    batch = {"events": [event(deployment, "c1")]}
    assert api.post(URL, batch, format="json", **token(deployment)).status_code == 202
    with django_assert_num_queries(0):
        assert ingest_source_for_token(deployment.ingest_token()) == source(deployment)
    secret = deployment.ingest_token()
    Deployment.objects.filter(pk=deployment.pk).delete()
    assert ingest_source_for_token(secret) is not None, "still cached"
    later = time.monotonic() + authentication.TOKEN_CACHE_SECONDS + 1
    monkeypatch.setattr(authentication.time, "monotonic", lambda: later)
    refused = api.post(URL, {"events": [event(deployment, "c2")]}, format="json", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert refused.status_code == 401


def test_a_version_registered_after_the_token_was_cached_is_accepted(deployment: Deployment, api: Any) -> None:
    assert api.post(URL, {"events": [event(deployment, "v1")]}, format="json", **token(deployment)).status_code == 202
    newer = ModelVersionFactory(model=deployment.registered_model, number=4, pk=20)
    batch = {"events": [event(deployment, "v2"), event(deployment, "v3", version_id=newer.pk)]}
    answer = api.post(URL, batch, format="json", **token(deployment))
    assert answer.status_code == 202 and answer.json() == {"accepted": 2}, answer.json()
    assert set(PredictionLog.objects.values_list("model_version_id", flat=True)) == {7, newer.pk}
    foreign = api.post(
        URL, {"events": [event(deployment, "v4", version_id=99_999)]}, format="json", **token(deployment)
    )
    assert foreign.json()["accepted"] == 0 and foreign.json()["rejected"][0]["field"] == "version_id"
