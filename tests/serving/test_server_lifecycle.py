"""Starting, reloading and stopping a model server; the spec format; shipping while the console is away."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from serving.app import TrafficSplit
from serving.events import EventShipper, event
from serving.metrics import Metrics
from serving.server import RELOAD_DONE, RELOAD_REFUSED
from serving.spec import SpecError, parse_spec
from tests.serving import test_server_support as support
from tests.serving.test_server_support import (
    REPO_ROOT,
    Bundle,
    EventSink,
    free_port,
    rows,
    start_server,
    version,
    wait_until,
    write_spec,
)

# Shared fixtures, made visible to pytest in this module.
bundles = support.bundles
sink = support.sink

GOOD = rows(1)[0]
SHA = "0" * 64


def minimal_spec(**changes: object) -> dict:
    spec = {
        "deployment_id": 1,
        "name": "m",
        "token": "t",
        "console_url": "",
        "versions": [{"version_id": "a", "artifact_path": "/x.zip", "sha256": SHA, "weight": 100}],
        "shadow": None,
    }
    spec.update(changes)
    return spec


# ------------------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"versions": []}, "versions"),
        ({"versions": [{"version_id": "a", "artifact_path": "/x", "sha256": SHA, "weight": 90}]}, "versions"),
        ({"versions": [{"artifact_path": "/x", "sha256": SHA, "weight": 100}]}, "versions[0].version_id"),
        (
            {"versions": [{"version_id": "a", "artifact_path": "/x", "sha256": "abc", "weight": 100}]},
            "versions[0].sha256",
        ),
        (
            {"versions": [{"version_id": "a", "artifact_path": "/x", "sha256": SHA, "weight": 1.5}]},
            "versions[0].weight",
        ),
        (
            {
                "versions": [
                    {"version_id": "a", "artifact_path": "/x", "sha256": SHA, "weight": 50},
                    {"version_id": "a", "artifact_path": "/y", "sha256": SHA, "weight": 50},
                ]
            },
            "versions[1].version_id",
        ),
        ({"shadow": {"version_id": "a", "artifact_path": "/x", "sha256": SHA}}, "shadow.version_id"),
        ({"shadow": {"version_id": "s", "sha256": SHA}}, "shadow.artifact_path"),
        ({"name": "has space"}, "name"),
        ({"deployment_id": True}, "deployment_id"),
        ({"console_url": "ftp://console"}, "console_url"),
        ({"console_url": "http://console/ingest", "token": ""}, "token"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_body_bytes": "big"}, "max_body_bytes"),
        ({"trust_pickle": "yes"}, "trust_pickle"),
        ({"sticky_key": {"header": "bad header"}}, "sticky_key.header"),
        ({"event_buffer_size": -1}, "event_buffer_size"),
    ],
)
def test_a_bad_spec_names_its_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(minimal_spec(**changes))
    assert error.value.field == field


def test_a_good_spec_gets_defaults() -> None:
    spec = parse_spec(minimal_spec())
    assert spec.sticky_header == "X-Request-Key" and spec.sticky_field == "request_key"
    assert (spec.max_rows, spec.max_body_bytes, spec.event_buffer_size) == (10_000, 10_485_760, 10_000)
    assert spec.trust_pickle is False and spec.shadow is None


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )


def test_the_server_refuses_to_start_on_a_bad_spec(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    path = tmp_path / "spec.json"
    write_spec(path, minimal_spec(versions=[version("a", bundles["rf_a"], 60)]))
    result = _run_cli("--spec", str(path), "--port", str(free_port()))
    assert result.returncode == 2 and "'versions'" in result.stderr and "sum to 100" in result.stderr

    tampered = version("a", bundles["rf_a"], 100) | {"sha256": bundles["rf_b"].sha256}
    write_spec(path, minimal_spec(versions=[tampered]))
    result = _run_cli("--spec", str(path), "--port", str(free_port()))
    assert result.returncode == 2 and "versions[0].sha256" in result.stderr

    path.write_text("{not json")
    result = _run_cli("--spec", str(path))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_the_server_refuses_ports_it_cannot_listen_on(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    path = tmp_path / "spec.json"
    write_spec(path, minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    port = free_port()
    result = _run_cli("--spec", str(path), "--port", str(port), "--service-port", str(port))
    assert result.returncode == 2 and "--service-port must be a port number other than --port" in result.stderr

    with socket.socket() as taken:  # an ordinary listener, without SO_REUSEPORT: nobody may share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = _run_cli("--spec", str(path), "--port", str(free_port()), "--service-port", str(busy))
        assert result.returncode == 2
        assert f"model server not started: cannot listen on 127.0.0.1:{busy}" in result.stderr
        result = _run_cli("--spec", str(path), "--port", str(busy))
        assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{busy}" in result.stderr


def test_check_loads_every_model(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    path = tmp_path / "spec.json"
    write_spec(path, minimal_spec(versions=[version("e", bundles["exploding"], 100)]))
    result = _run_cli("--check", "--spec", str(path))
    assert result.returncode == 1 and "pickle" in result.stderr
    write_spec(path, minimal_spec(versions=[version("e", bundles["exploding"], 100)], trust_pickle=True))
    assert _run_cli("--check", "--spec", str(path)).returncode == 0


def test_traffic_split_is_stable_and_follows_weights() -> None:
    split = TrafficSplit([85, 0, 15])
    picks = Counter(split.pick(f"key-{i}") for i in range(20_000))
    assert 1 not in picks
    assert abs(picks[2] / 20_000 - 0.15) < 0.01
    assert all(split.pick(f"key-{i}") == split.pick(f"key-{i}") for i in range(100))
    assert TrafficSplit.bucket("user-1") == int.from_bytes(__import__("hashlib").sha256(b"user-1").digest()[:8]) % 100


# ------------------------------------------------------------------------------------------ connections


def _read_response(sock: socket.socket) -> bytes:
    """Everything up to the server's end of the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_that_keeps_its_end_open_does_not_stall_the_worker(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    server = start_server(tmp_path / "linger", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    body = json.dumps({"dataframe_records": [GOOD]}).encode()
    request = (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as first:
            first.sendall(request)
            answer = _read_response(first)  # the server half-closes after its response
            assert answer.startswith(b"HTTP/1.1 200") and b'"model_version":"a"' in answer
            # This client neither closes nor stops sending. With one worker, the next request must not wait
            # for it (gunicorn's own close blocks up to 2 s for the client's end) ...
            first.sendall(b"more bytes the server never asked for")
            started = time.monotonic()
            status, _, _ = server.post("/invocations", {"dataframe_records": [GOOD]})
            assert status == 200
            # gunicorn's own close would hold the worker for 2 s; the margin absorbs a loaded machine.
            assert time.monotonic() - started < 1.8
            # ... and the bytes it sent after the response were read, not answered with a reset.
            first.shutdown(socket.SHUT_WR)
            assert first.recv(1) == b""
    finally:
        server.stop()
    assert "Traceback" not in server.log()


# ------------------------------------------------------------------------------------------ events


def test_predictions_succeed_while_the_console_is_away_and_drops_are_counted(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    spec = minimal_spec(
        console_url=f"http://127.0.0.1:{free_port()}/ingest",  # nothing listens there
        versions=[version("a", bundles["rf_a"], 100)],
        event_buffer_size=5,
    )
    server = start_server(tmp_path / "away", spec)
    try:
        for _ in range(20):
            status, _, body = server.post("/invocations", {"dataframe_records": [GOOD]})
            assert status == 200 and body["model_version"] == "a"
        # The shipper may hold a batch it took from the buffer; once it fails, those count as dropped too.
        wait_until(lambda: server.metric("model_server_events_dropped_total", reason="buffer_full") >= 15, timeout=10)
        assert server.metric("model_server_event_buffer_depth") <= 5
    finally:
        server.stop()


def test_events_are_flushed_on_graceful_shutdown(tmp_path: Path, bundles: dict[str, Bundle], sink: EventSink) -> None:
    spec = minimal_spec(console_url=sink.url, versions=[version("a", bundles["rf_a"], 100)])
    server = start_server(tmp_path / "flush", spec)
    ids = [f"flush-{i}" for i in range(5)]
    for request_id in ids:
        assert server.post("/invocations", {"dataframe_records": [GOOD]}, {"X-Request-Id": request_id})[0] == 200
    # Stop at once, well inside the shipper's 1 s interval: the events still reach the console.
    server.stop()
    assert server.process.returncode == 0
    assert set(ids) <= {e["request_id"] for e in sink.events()}


# ------------------------------------------------------------------------------------------ graceful reload


def test_graceful_reload_fails_no_request(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    spec = minimal_spec(versions=[version("v1", bundles["rf_a"], 100)])
    server = start_server(tmp_path / "reload", spec, workers=2)
    failures: list[str] = []
    seen: Counter = Counter()
    stop = threading.Event()
    body = json.dumps({"dataframe_records": [GOOD]}).encode()

    def load() -> None:
        while not stop.is_set():
            try:
                status, headers, answer = server.request("POST", "/invocations", raw=body)
                if status != 200:
                    failures.append(f"{status}: {answer}")
                else:
                    seen[headers["x-model-version"]] += 1
            except OSError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        write_spec(
            server.spec_path,
            spec | {"versions": [version("v1", bundles["rf_a"], 50), version("v2", bundles["rf_b"], 50)]},
        )
        old_workers = server.worker_pids()
        assert len(old_workers) == 2
        os.kill(server.master_pid(), signal.SIGHUP)
        # At least 3 s of load, and until the new version answers (bounded).
        started = time.monotonic()
        while time.monotonic() - started < 60 and (time.monotonic() - started < 3 or not seen["v2"]):
            time.sleep(0.1)
        new_version_at = dict(seen)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert failures == []
        assert new_version_at.get("v2"), f"the new version never answered: {new_version_at}\n{server.log()}"
        assert sum(seen.values()) > 20
        # Once the master says the reload is done, no old worker is left to answer with the old spec.
        wait_until(lambda: RELOAD_DONE in server.log(), timeout=30)
        assert server.worker_pids() & old_workers == set()
        for _ in range(20):
            assert server.get("/v2/models/m")[2]["versions"] == ["v1", "v2"]

        # A spec that cannot be served is refused; the running workers go on serving the last good one.
        write_spec(server.spec_path, spec | {"versions": [version("v3", bundles["rf_a"], 100) | {"sha256": SHA}]})
        os.kill(server.master_pid(), signal.SIGHUP)
        wait_until(lambda: RELOAD_REFUSED in server.log(), timeout=30)
        status, _, body = server.get("/v2/models/m")
        assert status == 200 and body["versions"] == ["v1", "v2"]
    finally:
        stop.set()
        server.stop()


def test_events_are_valid_json_whatever_the_values(sink: EventSink) -> None:
    """NaN inputs (nullable columns) and numpy outputs reach the console as standard JSON: null, plain lists."""
    shipper = EventShipper(
        url=sink.url,
        token="t",
        deployment_id=7,
        metrics=Metrics(),
        buffer_size=10,
        buffer_bytes=1 << 20,
        max_post_bytes=1 << 20,
        batch_size=1,
    )
    try:
        shipper.record(
            event(
                request_id="nan-1",
                event_id="e-nan-1",
                version_id="v1",
                inputs={"x1": [1.5, float("nan")], "city": ["Oslo", None]},
                outputs=np.array([0.25, np.nan]),
                probabilities=None,
                latency_ms=1.0,
                status=200,
                error=None,
                request_key=None,
                shadow=False,
                pinned=False,
                timestamp=0.0,
            ),
            1000,
        )
        (shipped,) = [
            e
            for e in sink.wait_for(lambda evs: any(e["request_id"] == "nan-1" for e in evs))
            if e["request_id"] == "nan-1"
        ]
    finally:
        shipper.close()
    assert shipped["inputs"] == {"x1": [1.5, None], "city": ["Oslo", None]}
    assert shipped["outputs"] == [0.25, None] and shipped["deployment_id"] == 7
    assert shipped["timestamp"] == "1970-01-01T00:00:00+00:00"
