"""The model server over HTTP: both protocols, bad inputs, metadata, readiness, metrics, traffic split, shadow,
and prediction events, against one real server process (two gunicorn workers) with small real models."""

from __future__ import annotations

import json
import math
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving.app import TrafficSplit
from tests.serving import test_server_support as support
from tests.serving.test_server_support import (
    Bundle,
    EventSink,
    ServerProcess,
    rows,
    start_server,
    version,
    wait_until,
)

# Shared fixtures, made visible to pytest in this module.
bundles = support.bundles
sink = support.sink

MAX_ROWS = 50
MAX_BODY = 20_000
TOKEN = "tok-123"
INFER = "/v2/models/churn/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Bundle], sink: EventSink) -> Iterator:
    spec = {
        "deployment_id": 42,
        "name": "churn",
        "token": TOKEN,
        "console_url": sink.url,
        "versions": [
            version("stable", bundles["rf_a"], 90),
            version("canary", bundles["rf_b"], 10),
            # Weight 0: reachable only through its own URL, to test a model that raises.
            version("exploding", bundles["exploding"], 0),
        ],
        "shadow": {
            "version_id": "shadow",
            "artifact_path": bundles["xgb_reg"].path,
            "sha256": bundles["xgb_reg"].sha256,
        },
        "sticky_key": {"header": "X-Request-Key", "field": "request_key"},
        "max_rows": MAX_ROWS,
        "max_body_bytes": MAX_BODY,
        "trust_pickle": True,
    }
    process = start_server(tmp_path_factory.mktemp("server"), spec, workers=2)
    yield process
    process.stop()


def v2_request(records: list[dict]) -> dict:
    return {
        "inputs": [
            {"name": "x1", "shape": [len(records)], "datatype": "FP64", "data": [r["x1"] for r in records]},
            {"name": "x2", "shape": [len(records)], "datatype": "FP64", "data": [r["x2"] for r in records]},
            {"name": "count", "shape": [len(records)], "datatype": "INT64", "data": [r["count"] for r in records]},
        ]
    }


# ------------------------------------------------------------------------------------------ protocols


def test_invocations_accepts_every_mlflow_payload(server: ServerProcess) -> None:
    records = rows(3)
    columns = ["x1", "x2", "count"]
    payloads = [
        {"dataframe_records": records},
        {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}},
        {"instances": records},
        {"inputs": {c: [r[c] for r in records] for c in columns}},
    ]
    answers = []
    for payload in payloads:
        status, headers, body = server.post("/invocations", payload, {"X-Request-Key": "same-user"})
        assert status == 200, body
        assert len(body["predictions"]) == 3 and set(body["predictions"]) <= {"yes", "no"}
        assert body["model_version"] == headers["x-model-version"]
        assert body["classes"] == ["no", "yes"]
        assert all(math.isclose(sum(p), 1.0) for p in body["probabilities"])
        answers.append(body["predictions"])
    # The same rows and the same key give the same version, hence the same answers, whatever the format.
    assert all(answer == answers[0] for answer in answers)


def test_v2_infer_returns_output_tensors(server: ServerProcess) -> None:
    request = v2_request(rows(4)) | {"id": "req-v2-1"}
    status, headers, body = server.post(INFER, request)
    assert status == 200, body
    assert body["model_name"] == "churn"
    assert body["model_version"] == headers["x-model-version"] in {"stable", "canary"}
    assert body["id"] == "req-v2-1" == headers["x-request-id"]
    predict, proba = body["outputs"]
    assert predict == {"name": "predict", "datatype": "BYTES", "shape": [4], "data": predict["data"]}
    assert proba["name"] == "predict_proba" and proba["shape"] == [4, 2] and len(proba["data"]) == 8


def test_v2_accepts_one_two_dimensional_tensor(server: ServerProcess) -> None:
    records = rows(2)
    data = [[r["x1"], r["x2"], r["count"]] for r in records]
    request = {"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP64", "data": data}]}
    status, _, body = server.post(INFER, request)
    assert status == 200, body
    assert body["outputs"][0]["shape"] == [2]


def test_pinned_version_url_bypasses_the_split(server: ServerProcess) -> None:
    for _ in range(5):
        status, headers, body = server.post("/v2/models/churn/versions/canary/infer", v2_request(rows(1)))
        assert status == 200 and body["model_version"] == "canary" == headers["x-model-version"]
    status, _, body = server.post("/v2/models/churn/versions/nope/infer", v2_request(rows(1)))
    assert status == 404


# ------------------------------------------------------------------------------------------ health, metadata


def test_health_and_readiness(server: ServerProcess) -> None:
    assert server.get("/v2/health/live")[0] == 200
    status, _, body = server.get("/v2/health/ready")
    assert (status, body) == (200, {"ready": True})
    assert server.get("/v2/models/churn/ready")[2] == {"name": "churn", "ready": True}
    assert server.get("/v2/models/churn/versions/canary/ready")[0] == 200
    assert server.get("/v2/models/other/ready")[0] == 404
    assert server.get("/ping")[0] == 200


def test_model_metadata(server: ServerProcess) -> None:
    status, _, body = server.get("/v2/models/churn")
    assert status == 200
    assert body["name"] == "churn"
    assert body["versions"] == ["stable", "canary", "exploding"]
    assert body["inputs"] == [
        {"name": "x1", "datatype": "FP64", "shape": [-1]},
        {"name": "x2", "datatype": "FP64", "shape": [-1]},
        {"name": "count", "datatype": "INT64", "shape": [-1]},
    ]
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]
    traffic = {v["version_id"]: v["weight"] for v in body["parameters"]["traffic"]}
    assert traffic == {"stable": 90, "canary": 10, "exploding": 0}
    assert body["parameters"]["shadow"]["version_id"] == "shadow"
    assert body["parameters"]["deployment_id"] == 42
    status, _, body = server.get("/v2/models/churn/versions/exploding")
    assert status == 200 and body["parameters"]["model_version"] == "exploding"
    assert server.get("/v2/models/unknown")[0] == 404


# ------------------------------------------------------------------------------------------ bad input

GOOD = rows(1)[0]


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"dataframe_records": [{"x1": 1.0, "x2": 2.0}]}, 400, "count"),
        ({"dataframe_records": [{"x1": "abc", "x2": 2.0, "count": 1}]}, 400, "x1"),
        ({"dataframe_records": [{"x1": None, "x2": 2.0, "count": 1}]}, 400, "x1"),
        ({"dataframe_records": [{"x1": 1.0, "x2": 2.0, "count": 1.5}]}, 400, "count"),
        ({"dataframe_records": [GOOD] * (MAX_ROWS + 1)}, 400, "rows"),
        ({"dataframe_records": []}, 400, "rows"),
        ({"something": []}, 400, "payload"),
        ([GOOD], 400, "body"),
        ({"inputs": [{"name": "x1", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, 400, "x1"),
        ({"dataframe_records": [{"x1": [1.0], "x2": 2.0, "count": 1}]}, 400, "x1"),
        ({"dataframe_records": [{"x1": 1e400, "x2": 2.0, "count": 1}]}, 400, "x1"),
        ({"dataframe_records": [{"x1": 1.0, "x2": 2.0, "count": 1e19}]}, 400, "count"),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "null-not-allowed",
        "fraction-in-integer",
        "too-many-rows",
        "no-rows",
        "unknown-format",
        "not-an-object",
        "bad-tensor-shape",
        "list-in-a-cell",
        "infinity",
        "beyond-int64",
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server: ServerProcess, payload: object, status: int, field: str) -> None:
    got, headers, body = server.post("/invocations", payload)
    assert got == status, body
    assert body["field"] == field and body["error"]
    assert headers["x-request-id"] == body["request_id"]
    assert server.post("/invocations", {"dataframe_records": [GOOD]})[0] == 200


def test_nan_where_not_allowed(server: ServerProcess) -> None:
    raw = b'{"dataframe_split": {"columns": ["x1", "x2", "count"], "data": [[NaN, 1.0, 2]]}}'
    status, _, body = server.request("POST", "/invocations", raw=raw)
    assert status == 400 and body["field"] == "x1"


def test_malformed_json(server: ServerProcess) -> None:
    status, _, body = server.request("POST", "/invocations", raw=b'{"dataframe_records": [')
    assert status == 400 and body["field"] == "body"
    assert server.post(INFER, v2_request(rows(1)))[0] == 200


def test_deeply_nested_body_is_a_400_counted_against_no_version(server: ServerProcess, sink: EventSink) -> None:
    nested = b"[" * 5000 + b"1" + b"]" * 5000
    bodies = {
        "/invocations": b'{"inputs": {"x1": ' + nested + b', "x2": [1.0], "count": [1]}}',
        INFER: b'{"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": ' + nested + b"}]}",
        # Pinned to a version: still not that version's failure.
        "/v2/models/churn/versions/canary/infer": b'{"inputs": {"x1": ' + b"[" * 5000 + b"}",
    }
    canary_errors = server.metric("model_server_request_errors_total", version="canary")
    ids = []
    for path, raw in bodies.items():
        request_id = f"nested-{uuid.uuid4()}"
        status, headers, body = server.request("POST", path, raw=raw, headers={"X-Request-Id": request_id})
        assert status == 400, body
        assert body["field"] == "body" and "nests more than 64 levels" in body["error"]
        assert "model_version" not in body and "x-model-version" not in headers
        ids.append(request_id)
    events = sink.wait_for(lambda evs: set(ids) <= {e["request_id"] for e in evs})
    mine = [e for e in events if e["request_id"] in ids]
    assert [(e["version_id"], e["status"]) for e in mine] == [(None, 400)] * 3
    wait_until(lambda: server.metric("model_server_request_errors_total", version="none", status="400") >= 3)
    assert server.metric("model_server_request_errors_total", version="canary") == canary_errors
    # Nesting up to the limit is only a malformed tensor, refused by the parser of tensors, not the depth check.
    status, _, body = server.request("POST", INFER, raw=b'{"inputs": ' + b"[" * 62 + b"]" * 62 + b"}")
    assert status == 400 and "nests" not in body["error"]
    assert server.post(INFER, v2_request(rows(1)))[0] == 200


def test_too_large_body_is_refused_before_reading(server: ServerProcess) -> None:
    status, _, body = server.request("POST", "/invocations", raw=b" " * (MAX_BODY + 1))
    assert status == 413 and body["field"] == "body"
    # A client announcing a huge body gets its 413 without the server waiting for (or buffering) the body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    assert server.post("/invocations", {"dataframe_records": [GOOD]})[0] == 200


def test_wrong_method_and_unknown_routes(server: ServerProcess) -> None:
    assert server.get(INFER)[0] == 405
    assert server.get("/invocations")[0] == 405
    assert server.post("/v2/health/ready", {})[0] == 405
    assert server.get("/nothing-here")[0] == 404
    assert server.post("/v2/models/other/infer", v2_request(rows(1)))[0] == 404


def test_a_model_that_raises_gives_500_and_the_server_keeps_serving(server: ServerProcess) -> None:
    before = server.metric("model_server_request_errors_total", version="exploding", status="500")
    bad = {"dataframe_records": [{"x1": 5000.0, "x2": 0.0, "count": 1}]}
    status, headers, body = server.post("/v2/models/churn/versions/exploding/infer", bad)
    assert status == 500 and "x1 out of range" in body["error"]
    assert headers["x-model-version"] == "exploding"
    good = {"dataframe_records": [{"x1": 5.0, "x2": 0.0, "count": 1}]}
    status, _, body = server.post("/v2/models/churn/versions/exploding/infer", good)
    assert status == 200 and body["outputs"][0]["data"] == [10.0]
    assert body["outputs"][0]["datatype"] == "FP64"
    # Counted: the worker that answered has it at once, the other within a snapshot interval.
    wait_until(lambda: server.metric("model_server_request_errors_total", version="exploding", status="500") > before)


# ------------------------------------------------------------------------------------------ traffic split


def test_split_without_key_follows_the_weights(server: ServerProcess) -> None:
    body = json.dumps({"dataframe_records": [GOOD]}).encode()

    def one(_: int) -> str:
        status, headers, _ = server.request("POST", "/invocations", raw=body)
        assert status == 200
        return headers["x-model-version"]

    with ThreadPoolExecutor(4) as pool:
        counts = Counter(pool.map(one, range(1000)))
    assert set(counts) == {"stable", "canary"}
    # Binomial(1000, 0.1): sd 9.5, so ±45 fails about once in 10^5 runs.
    assert 55 <= counts["canary"] <= 145, counts


def test_sticky_keys_keep_their_version(server: ServerProcess) -> None:
    split = TrafficSplit([90, 10, 0])
    names = ["stable", "canary", "exploding"]
    keys = [f"user-{i}" for i in range(40)]
    seen: dict[str, set[str]] = {}
    for key in keys:
        for attempt in range(3):
            if attempt == 0:
                status, headers, _ = server.post("/invocations", {"dataframe_records": [GOOD]}, {"X-Request-Key": key})
            else:
                # The key may also travel in the body (MLflow) or in V2 "parameters".
                payload = (
                    {"dataframe_records": [GOOD], "request_key": key}
                    if attempt == 1
                    else v2_request([GOOD]) | {"parameters": {"request_key": key}}
                )
                status, headers, _ = server.post(INFER if attempt == 2 else "/invocations", payload)
            assert status == 200
            seen.setdefault(key, set()).add(headers["x-model-version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    # The documented hash decides: sha256 of the key, mod 100, against the cumulative weights.
    assert all(seen[key] == {names[split.pick(key)]} for key in keys)


def test_keyed_split_of_1000_keys_is_within_3_percent(server: ServerProcess) -> None:
    def one(i: int) -> str:
        status, headers, _ = server.post("/invocations", {"dataframe_records": [GOOD]}, {"X-Request-Key": f"k{i}"})
        assert status == 200
        return headers["x-model-version"]

    with ThreadPoolExecutor(4) as pool:
        counts = Counter(pool.map(one, range(1000)))
    assert 70 <= counts["canary"] <= 130, counts


# ------------------------------------------------------------------------------------------ shadow and events


def test_shadow_gets_a_copy_and_never_changes_the_response(server: ServerProcess, sink: EventSink) -> None:
    request_id = f"shadow-{uuid.uuid4()}"
    records = rows(2, seed=11)
    status, headers, body = server.post(
        "/invocations", {"dataframe_records": records}, {"X-Request-Id": request_id, "X-Request-Key": "s1"}
    )
    assert status == 200 and headers["x-model-version"] != "shadow"
    assert set(body["predictions"]) <= {"yes", "no"}
    events = sink.wait_for(lambda evs: sum(e["request_id"] == request_id for e in evs) == 2)
    live, shadow = sorted((e for e in events if e["request_id"] == request_id), key=lambda e: e["shadow"])
    assert live["shadow"] is False and live["outputs"] == body["predictions"]
    assert live["version_id"] == body["model_version"] and live["request_key"] == "s1"
    assert shadow["shadow"] is True and shadow["version_id"] == "shadow" and shadow["status"] == 200
    assert all(isinstance(v, float) for v in shadow["outputs"]) and len(shadow["outputs"]) == 2
    assert shadow["inputs"] == live["inputs"] == {name: [record[name] for record in records] for name in records[0]}


def test_events_say_which_requests_were_pinned_and_carry_the_servers_own_event_id(
    server: ServerProcess, sink: EventSink
) -> None:
    """Canary analysis must tell routed traffic from requests a caller pinned to a version, and the console must
    not de-duplicate on the caller's X-Request-Id (a reused one would hide every later request)."""
    request_id = f"reused-{uuid.uuid4()}"
    paths = ["/invocations", "/v2/models/churn/versions/stable/infer", "/v2/models/churn/versions/stable/infer"]
    for path in paths:
        body = {"dataframe_records": rows(1)} if path == "/invocations" else v2_request(rows(1))
        status, headers, _ = server.post(path, body, {"X-Request-Id": request_id})
        assert status == 200 and headers["x-request-id"] == request_id, "the caller's id is answered back"
    status, _, _ = server.post(paths[1], {"inputs": []}, {"X-Request-Id": request_id})
    assert status == 400
    events = sink.wait_for(lambda evs: sum(e["request_id"] == request_id and not e["shadow"] for e in evs) == 4)
    live = [e for e in events if e["request_id"] == request_id and not e["shadow"]]
    assert sorted(e["pinned"] for e in live) == [False, True, True, True]
    assert len({e["event_id"] for e in live}) == 4, "one server-made id per request, whatever the caller sent"
    assert all(str(uuid.UUID(e["event_id"])) == e["event_id"] for e in live)
    # A shadow copy carries its request's event id (so the console pairs it with its own live answer).
    shadows = sink.wait_for(lambda evs: sum(e["request_id"] == request_id and e["shadow"] for e in evs) >= 3)
    for shadow in (e for e in shadows if e["request_id"] == request_id and e["shadow"]):
        (twin,) = [e for e in live if e["event_id"] == shadow["event_id"]]
        assert shadow["pinned"] == twin["pinned"]


def test_events_are_shipped_in_batches_with_the_token(server: ServerProcess, sink: EventSink) -> None:
    ids = [f"batch-{uuid.uuid4()}" for _ in range(30)]
    for request_id in ids:
        assert server.post("/invocations", {"dataframe_records": [GOOD]}, {"X-Request-Id": request_id})[0] == 200
    server.post("/invocations", {"dataframe_records": [{"x1": "bad"}]}, {"X-Request-Id": ids[0] + "-bad"})
    wanted = set(ids) | {ids[0] + "-bad"}
    sink.wait_for(lambda evs: wanted <= {e["request_id"] for e in evs if not e["shadow"]})
    posts = [p for p in sink.posts if any(e["request_id"] in wanted for e in p["body"]["events"])]
    assert len(posts) < len(ids) / 2, "events must travel in batches, not one post per prediction"
    assert all(p["authorization"] == f"Bearer {TOKEN}" for p in sink.posts)
    assert all(p["path"] == "/api/ingest/events" for p in sink.posts)
    by_id = {e["request_id"]: e for p in posts for e in p["body"]["events"] if not e["shadow"]}
    good = by_id[ids[1]]
    assert good["deployment_id"] == 42 and good["status"] == 200 and good["error"] is None
    assert good["inputs"] == {name: [value] for name, value in GOOD.items()}, "inputs travel by column"
    assert good["outputs"][0] in {"yes", "no"} and good["latency_ms"] > 0
    assert good["timestamp"].endswith("+00:00")
    bad = by_id[ids[0] + "-bad"]
    assert bad["status"] == 400 and "x2" in bad["error"] and bad["outputs"] is None


def test_metrics_exposition(server: ServerProcess) -> None:
    def canary_requests() -> float:
        return server.metric("model_server_requests_total", version="canary", protocol="v2", status="200")

    def settled() -> float:
        # Each worker writes its snapshot once a second and any worker answers for both: a figure is settled
        # once two reads more than a snapshot interval apart agree.
        previous = canary_requests()
        for _ in range(10):
            time.sleep(1.2)
            current = canary_requests()
            if current == previous:
                return current
            previous = current
        raise AssertionError(f"the request count never settled: {previous}")

    def shadow_predictions() -> float:
        return server.metric("model_server_shadow_predictions_total", version="shadow", status="200")

    def bad_requests() -> float:
        return server.metric("model_server_request_errors_total", status="400")

    def shipped() -> float:
        return server.metric("model_server_events_shipped_total")

    # The counts start from what this test sends, so it does not depend on the tests before it.
    before = settled()
    shadow_before, bad_before, shipped_before = shadow_predictions(), bad_requests(), shipped()
    for _ in range(20):
        assert server.post("/v2/models/churn/versions/canary/infer", v2_request(rows(3)))[0] == 200
    bad_body = {"inputs": [{"name": "x1", "shape": [2], "datatype": "FP64", "data": [1.0]}]}
    assert server.post("/v2/models/churn/versions/canary/infer", bad_body)[0] == 400
    wait_until(lambda: canary_requests() >= before + 20, timeout=15)
    status, headers, text = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert settled() - before == 20
    for line in [
        "# TYPE model_server_request_duration_seconds histogram",
        'model_server_request_duration_seconds_bucket{version="canary",le="+Inf"}',
        'model_server_batch_rows_bucket{le="5"}',
        "model_server_event_buffer_depth ",
        "model_server_events_shipped_total ",
        "# TYPE model_server_events_dropped_total counter",
        'model_server_traffic_weight{version="canary"} 10',
        'model_server_version_info{version="shadow",role="shadow",flavor="xgboost"',
        "model_server_ready 1",
    ]:
        assert line in text, line
    wait_until(lambda: shadow_predictions() > shadow_before, timeout=15)
    wait_until(lambda: bad_requests() > bad_before, timeout=15)
    wait_until(lambda: shipped() > shipped_before, timeout=15)


def test_artifact_paths_in_the_spec_may_be_relative(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    from serving.spec import load_spec

    (tmp_path / "spec.json").write_text(
        json.dumps(
            {
                "deployment_id": "d",
                "name": "m",
                "versions": [
                    {"version_id": 1, "artifact_path": "model.zip", "sha256": bundles["rf_a"].sha256, "weight": 100}
                ],
            }
        )
    )
    assert load_spec(tmp_path / "spec.json").versions[0].artifact_path == str(tmp_path / "model.zip")
