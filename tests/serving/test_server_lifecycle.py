"""Starting, reloading and stopping a model server; the spec format; shipping while the console is away."""

from __future__ import annotations

import gc
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from gunicorn.config import Config

from serving.app import TrafficSplit, create_app
from serving.events import EventShipper, event
from serving.metrics import Metrics
from serving.server import (
    MAX_PENDING,
    PREREAD_BYTES,
    RELOAD_DONE,
    RELOAD_REFUSED,
    SimpleRequest,
    request_complete,
    request_length,
    settle_collector,
    simple_request,
)
from serving.spec import SpecError, parse_spec
from tests.serving import test_server_support as support
from tests.serving.test_server_support import (
    REPO_ROOT,
    Bundle,
    EventSink,
    ServerProcess,
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


def _post_bytes(body: bytes, *, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{connection}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` responses read off a kept-alive connection: each one's head and body (by its Content-Length)."""
    data, answers = b"", []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            if len(data) >= end + 4 + length:
                answers.append((head, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {len(answers)} of {count} responses"
        data += chunk
    return answers


def test_a_client_that_keeps_its_end_open_does_not_stall_the_worker(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    server = start_server(tmp_path / "linger", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    request = _post_bytes(json.dumps({"dataframe_records": [GOOD]}).encode(), close=True)
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


def test_a_connection_is_kept_alive_for_the_next_requests_even_pipelined(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """One worker, one connection: requests sent one after the other, then three in a single send, each get their
    own answer in order; the connection stays open until the client's `Connection: close`."""
    server = start_server(tmp_path / "keep", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    ids = [f"keep-{i}" for i in range(6)]
    bodies = [json.dumps({"dataframe_records": [GOOD] * (i + 1)}).encode() for i in range(6)]
    requests = [
        _post_bytes(body, close=False).replace(b"Host: x\r\n", f"Host: x\r\nX-Request-Id: {rid}\r\n".encode())
        for body, rid in zip(bodies, ids, strict=True)
    ]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            answers = []
            for request in requests[:3]:
                sock.sendall(request)
                answers += _responses(sock, 1)
            sock.sendall(b"".join(requests[3:]))
            answers += _responses(sock, 3)
            assert [re.search(rb"(?i)x-request-id: (\S+)", head).group(1).decode() for head, _ in answers] == ids
            assert all(b"\r\nConnection: keep-alive" in head and b"\r\nDate: " in head for head, _ in answers)
            assert [len(json.loads(body)["predictions"]) for _, body in answers] == [1, 2, 3, 4, 5, 6]
            sock.sendall(_post_bytes(bodies[0], close=True))
            ((head, _),) = _responses(sock, 1)
            assert b"\r\nConnection: close" in head
            assert sock.recv(1) == b""  # and the server ends the connection
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def _connections_per_worker(server: ServerProcess) -> list[int]:
    """How many established client connections each worker process holds."""
    counts = []
    for pid in server.worker_pids():
        held = psutil.Process(pid).net_connections(kind="tcp")
        counts.append(sum(1 for c in held if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port))
    return counts


def test_kept_connections_are_shared_between_the_workers(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    """A kept connection stays with the worker that accepted it: 16 clients connecting at once must not all land
    on one of two workers (taking every waiting connection at once did that in a benchmark run)."""
    server = start_server(tmp_path / "share", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]), workers=2)
    request = _post_bytes(json.dumps({"dataframe_records": [GOOD]}).encode(), close=False)
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(16)]
    try:
        for client in clients:
            client.sendall(request)
        for client in clients:
            assert len(_responses(client, 1)) == 1
        counts = _connections_per_worker(server)
        assert sum(counts) == 16 and min(counts) >= 3, counts
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # A body above the limit is refused at its headers, unread: its bytes cannot be told from a next request.
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 1000, b"413"),
        # A chunked body's end is found only by parsing it.
        (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET /ping HTTP/1.0\r\n\r\n", b"200"),
        # gunicorn's parser refuses it; nothing after it can be framed.
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n{}", b"400"),
    ],
    ids=["unread-body", "chunked", "http-1.0", "bad-length"],
)
def test_a_connection_whose_next_request_cannot_be_found_is_closed(
    tmp_path: Path, bundles: dict[str, Bundle], request_bytes: bytes, status: bytes
) -> None:
    server = start_server(tmp_path / "close", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request_bytes)
            answer = _read_response(sock)  # returns once the server has closed its end
        assert answer.split(b" ")[1] == status and b"\r\nConnection: close" in answer
    finally:
        server.stop()


def test_an_idle_kept_connection_is_closed_after_the_keepalive_time_without_an_answer(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    server = start_server(tmp_path / "idle", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(_post_bytes(json.dumps({"dataframe_records": [GOOD]}).encode(), close=False))
            assert len(_responses(sock, 1)) == 1
            started = time.monotonic()
            assert _read_response(sock) == b""  # no 408 for a request that never began
            assert 4 < time.monotonic() - started < 10  # gunicorn's `keepalive`: 5 s
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET", 31),
        (b"POST / HTTP/1.1\r\ncontent-length:3\r\n\r\nabcPOST", 40),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", 63),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", None),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n", None),
    ],
)
def test_the_front_knows_where_a_request_ends(data: bytes, length: int | None) -> None:
    assert request_length(data) == length


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (
            b"POST /invocations HTTP/1.1\r\nHost: x:1\r\ncontent-type: application/json\r\n"
            b"Content-Length: 2\r\nX-Request-Id:  r-1 \t\r\nConnection: Keep-Alive\r\n\r\n{}GET /ping",
            SimpleRequest(
                "POST",
                "/invocations",
                "",
                {
                    "HTTP_HOST": "x:1",
                    "CONTENT_TYPE": "application/json",
                    "CONTENT_LENGTH": "2",
                    "HTTP_X_REQUEST_ID": "r-1",
                    "HTTP_CONNECTION": "Keep-Alive",
                },
                138,
                140,
            ),
        ),
        (
            b"GET /v2/models/m/ready?verbose=1&x HTTP/1.1\r\n\r\n",
            SimpleRequest("GET", "/v2/models/m/ready", "verbose=1&x", {}, 47, 47),
        ),
    ],
    ids=["post-with-next-request", "get-with-query"],
)
def test_the_front_parses_simple_requests_itself(data: bytes, parsed: SimpleRequest) -> None:
    assert simple_request(data, Config()) == parsed


@pytest.mark.parametrize(
    "data",
    [
        b"POST /invocations HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",  # the body is not all here
        b"POST /invocations HTTP/1.1\r\nContent-Length: 2\r\n",  # nor the headers
        b"POST /invocations HTTP/1.1\r\nHost: x\r\n\r\n",  # a POST without a length
        b"POST /invocations HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}",
        b"POST /invocations HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /invocations HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET /ping HTTP/1.0\r\n\r\n",
        b"PUT /ping HTTP/1.1\r\n\r\n",
        b"GET http://x/ping HTTP/1.1\r\n\r\n",
        b"GET /pi%6Eg HTTP/1.1\r\n\r\n",
        b"GET /ping#top HTTP/1.1\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",  # "_" in a name: gunicorn drops it
        b"GET /ping HTTP/1.1\r\nX-Note: caf\xc3\xa9\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nX-Note: a\r\n folded\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nX-Note : a\r\n\r\n",
        b"GET /ping HTTP/1.1\nHost: x\n\n",
        b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\n\r\n",  # past gunicorn's limit_request_line
        b"GET /ping HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",  # past limit_request_fields
    ],
)
def test_anything_but_a_simple_request_is_left_to_gunicorns_parser(data: bytes) -> None:
    assert simple_request(data, Config()) is None


def test_requests_parsed_by_the_front_or_by_gunicorn_get_the_same_answers(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """The same prediction asked on one kept connection in forms each parser takes, and a request gunicorn
    refuses in between: the same answer each time, and the connection still serves after the refusal's close."""
    server = start_server(tmp_path / "parsers", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    body = json.dumps({"dataframe_records": rows(4)}).encode()
    forms = {
        "simple": _post_bytes(body, close=False),
        "query": _post_bytes(body, close=False).replace(b"/invocations", b"/invocations?source=test"),
        "percent-encoded": _post_bytes(body, close=False).replace(b"/invocations", b"/invocation%73"),
        "underscore header": _post_bytes(body, close=False).replace(b"Host: x\r\n", b"Host: x\r\nX_Note: 1\r\n"),
        "http/1.0 keep-alive": _post_bytes(body, close=False).replace(
            b"HTTP/1.1\r\n", b"HTTP/1.0\r\nConnection: keep-alive\r\n"
        ),
    }
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            answers = {}
            for name, request in forms.items():
                sock.sendall(request)
                ((head, answer),) = _responses(sock, 1)
                assert head.split(b" ")[1] == b"200", (name, head)
                answers[name] = json.loads(answer)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                _post_bytes(body, close=False).replace(b"Content-Length:", b"Content-Length: 1\r\nContent-Length:")
            )
            refused = _read_response(sock)
    finally:
        server.stop()
    assert refused.split(b" ")[1] == b"400" and b"\r\nConnection: close" in refused
    predictions = {name: (answer["predictions"], answer["probabilities"]) for name, answer in answers.items()}
    assert len(set(map(repr, predictions.values()))) == 1, predictions
    assert "Traceback" not in server.log()


def test_answers_larger_than_the_socket_buffers_reach_a_client_that_reads_them_late(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """The worker's connections are non-blocking: an answer the kernel cannot take whole (the client reads
    nothing for a while, its window is small, and 24 answers of ~220 kB exceed the largest send buffer the
    kernel gives, 4 MB) is finished blocking, within the read timeout, and the connection is kept."""
    server = start_server(tmp_path / "large", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    request = _post_bytes(json.dumps({"dataframe_records": rows(5000)}).encode(), close=False)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
        sock.settimeout(20)
        with sock:
            sock.connect(("127.0.0.1", server.port))
            # Sent from a thread: the server stops reading requests while its answers wait to be read.
            sender = threading.Thread(target=sock.sendall, args=(request * 24,))
            sender.start()
            time.sleep(1.5)
            answers = _responses(sock, 24)
            sender.join()
    finally:
        server.stop()
    assert sum(len(body) for _, body in answers) > 5_000_000
    assert all(b"\r\nConnection: keep-alive" in head for head, _ in answers)
    assert [len(json.loads(body)["predictions"]) for _, body in answers] == [5000] * 24
    assert "Traceback" not in server.log()


def test_the_collector_stays_off_the_request_path_and_still_collects_cycles(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """A worker's app, in this process, with its console away (events stay buffered, as between shipments):
    300 predictions run no collection; cyclic garbage is still collected."""
    spec_path = tmp_path / "spec.json"
    console = f"http://127.0.0.1:{free_port()}/ingest"
    write_spec(spec_path, minimal_spec(versions=[version("a", bundles["rf_a"], 100)], console_url=console))
    app = create_app(spec_path)
    body = json.dumps({"dataframe_records": rows(32)}).encode()
    generations: list[int] = []

    def collected(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.callbacks.append(collected)
    try:
        settle_collector()
        for _ in range(300):
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/invocations",
                "CONTENT_LENGTH": str(len(body)),
                "wsgi.input": io.BytesIO(body),
            }
            answer = app(environ, lambda status, headers, exc_info=None: None)
            assert b'"model_version":"a"' in b"".join(answer)
            answer.close()
        assert app.shipper.depth() == 300  # the events wait in the buffer, as they do between shipments
        assert generations == []
        for _ in range(60_000):
            cycle: list = []
            cycle.append(cycle)
        assert generations
    finally:
        gc.callbacks.remove(collected)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        app.close(timeout=0.1)


def test_slow_clients_do_not_stall_the_server(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    """50 connections send their headers and 1 byte of a 1,000-byte body, then nothing (issue 13, item 6): the
    two sync workers must go on serving every other client at once, and still answer the slow ones that finish."""
    server = start_server(tmp_path / "slow", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]), workers=2)
    body = json.dumps({"dataframe_records": [GOOD]}).encode()
    head = _post_bytes(body, close=True)[: -len(body)]
    slow: list[socket.socket] = []
    try:
        for _ in range(50):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connection.sendall(head + body[:1])
            slow.append(connection)
        time.sleep(0.5)  # the workers have taken (or could take) every slow connection by now
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            status, _, answer = server.post("/invocations", {"dataframe_records": [GOOD]})
            latencies.append(time.monotonic() - started)
            assert status == 200 and answer["model_version"] == "a"
        assert max(latencies) < 1.0, latencies
        # A slow client that finishes its body is answered like any other.
        for connection in slow[:5]:
            connection.sendall(body[1:])
            assert _read_response(connection).startswith(b"HTTP/1.1 200")
        # Stopping with 45 unfinished requests: the workers wait a little for them, then exit cleanly.
        started = time.monotonic()
        server.stop()
        assert server.process.returncode == 0 and time.monotonic() - started < 12
    finally:
        for connection in slow:
            connection.close()
        server.stop()
    assert "Traceback" not in server.log()


def test_a_worker_holding_as_many_unfinished_requests_as_it_can_waits_without_spinning(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """Past MAX_PENDING unfinished requests a worker stops accepting (the rest wait in the listen backlog); it must
    then sleep until one finishes or times out, not poll in a loop."""
    server = start_server(tmp_path / "full", minimal_spec(versions=[version("a", bundles["rf_a"], 100)]))
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    stuck: list[socket.socket] = []
    try:
        for _ in range(MAX_PENDING + 20):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connection.sendall(head)
            stuck.append(connection)
        (worker,) = (psutil.Process(pid) for pid in server.worker_pids())
        wait_until(lambda: _connections_per_worker(server)[0] >= MAX_PENDING)
        before = sum(worker.cpu_times()[:2])
        time.sleep(2)
        assert sum(worker.cpu_times()[:2]) - before < 0.5  # a spinning worker burns the whole 2 s
    finally:
        for connection in stuck:
            connection.close()
        server.stop()


def test_a_request_that_never_finishes_is_answered_408_after_the_read_timeout(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    spec = minimal_spec(versions=[version("a", bundles["rf_a"], 100)])
    server = start_server(tmp_path / "timeout", spec, options=("--read-timeout", "1"))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stuck:
            stuck.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            started = time.monotonic()
            assert _read_response(stuck).startswith(b"HTTP/1.1 408")
            assert 0.9 < time.monotonic() - started < 5
        assert server.post("/invocations", {"dataframe_records": [GOOD]})[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", False),
        (b"POST / HTTP/1.1\r\ncontent-length:3\r\n\r\nabc", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", True),  # the parser refuses it
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + b"x" * PREREAD_BYTES, True),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 70_000, True),  # too long: the parser refuses it
    ],
)
def test_the_front_serves_a_request_once_it_is_whole(data: bytes, whole: bool) -> None:
    assert request_complete(data) is whole


def test_the_front_serves_a_body_above_the_limit_at_once_for_its_413() -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{"
    assert request_complete(head, body_limit=4000) and not request_complete(head, body_limit=6000)


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


@pytest.mark.parametrize("kept_alive", [False, True], ids=["connection-per-request", "kept-alive"])
def test_graceful_reload_fails_no_request(tmp_path: Path, bundles: dict[str, Bundle], kept_alive: bool) -> None:
    """Clients that open a connection per request, or keep theirs (http.client reconnects after a response that
    says `Connection: close`, and fails a request on a connection the server dropped), lose nothing."""
    spec = minimal_spec(versions=[version("v1", bundles["rf_a"], 100)])
    server = start_server(tmp_path / "reload", spec, workers=2)
    failures: list[str] = []
    seen: Counter = Counter()
    stop = threading.Event()
    body = json.dumps({"dataframe_records": [GOOD]}).encode()

    def kept_alive_request(connection: http.client.HTTPConnection) -> tuple[int, dict, bytes]:
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def load() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                if kept_alive:
                    status, headers, answer = kept_alive_request(connection)
                else:
                    status, headers, answer = server.request("POST", "/invocations", raw=body)
                if status != 200:
                    failures.append(f"{status}: {answer}")
                else:
                    seen[headers["x-model-version"]] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                connection.close()
        connection.close()

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


def test_a_worker_respawned_during_or_after_a_refused_reload_boots_the_served_spec(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    """The backend writes the new spec, then SIGHUPs; a worker that dies before the refusal is known (and the
    backend has put its file back) is respawned at once. It must boot the spec being served: one that cannot
    load would fail to boot, and gunicorn halts the whole server when a worker does."""
    spec = minimal_spec(versions=[version("v1", bundles["rf_a"], 100)])
    server = start_server(tmp_path / "respawn", spec, workers=2)
    try:
        write_spec(server.spec_path, spec | {"versions": [version("v3", bundles["rf_a"], 100) | {"sha256": SHA}]})
        os.kill(server.master_pid(), signal.SIGHUP)
        first = server.worker_pids()
        os.kill(min(first), signal.SIGKILL)  # dies while the master checks the new spec
        wait_until(lambda: RELOAD_REFUSED in server.log(), timeout=30)
        # And one more death after the refusal, with the refused spec still in the file.
        wait_until(lambda: len(server.worker_pids()) == 2, timeout=30)
        (survivor,) = server.worker_pids() & first
        os.kill(survivor, signal.SIGKILL)
        wait_until(lambda: len(server.worker_pids() - first) == 2 or server.process.poll() is not None, timeout=30)

        def answers() -> bool:
            try:
                return all(server.get("/v2/models/m")[0] == 200 for _ in range(4))
            except OSError:  # both replacements still loading their models on a busy machine
                return False

        wait_until(lambda: server.process.poll() is not None or answers(), timeout=60)
        assert server.process.poll() is None, f"the server halted:\n{server.log()}"
        for _ in range(10):
            status, headers, _ = server.post("/invocations", {"dataframe_records": [GOOD]})
            assert status == 200 and headers["x-model-version"] == "v1"
        assert "Worker failed to boot" not in server.log()
    finally:
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
