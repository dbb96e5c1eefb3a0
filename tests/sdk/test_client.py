"""The SDK's HTTP client against a real local HTTP server that answers what each test scripts: retries on
502/503/504 with backoff (and Retry-After), no retry of a POST that a proxy may have passed on, errors carrying
the field messages, pagination across pages. No Django: the SDK must work without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from mlops_sdk import Client, ConfigurationError, ServerError, ValidationError
from mlops_sdk.errors import NotFound
from tests.sdk.conftest import SDK_ROOT


class Script:
    """The answers the server gives, in order (the last one repeats), and the requests it saw."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        self.requests: list[dict[str, Any]] = []

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        self.answers.append((status, headers, body))


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": self.rfile.read(length) if length else b"",
                }
            )
            index = min(len(script.requests), len(script.answers)) - 1
            status, headers, body = script.answers[index]
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _handle  # noqa: N815 (http.server's naming)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def make_client(url: str, delays: list[float], **kwargs: Any) -> Client:
    return Client(url, token="mlc_test", backoff=0.5, max_backoff=4.0, sleep=delays.append, **kwargs)


def test_a_get_is_retried_on_503_then_succeeds_with_exponential_backoff(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(503, {"detail": "busy"})
    script.answer(502, None)
    script.answer(504, None)
    script.answer(200, {"id": 7, "name": "iris"})
    delays: list[float] = []
    client = make_client(url, delays)

    assert client.get("/deployments/7/") == {"id": 7, "name": "iris"}
    assert [r["path"] for r in script.requests] == ["/api/v1/deployments/7/"] * 4
    assert delays == [0.5, 1.0, 2.0]
    # One request id for every attempt, and the personal token as a bearer token.
    assert len({r["headers"]["X-Request-Id"] for r in script.requests}) == 1
    assert script.requests[0]["headers"]["Authorization"] == "Bearer mlc_test"


def test_retry_after_is_honoured_and_capped(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(503, {"detail": "busy"}, Retry_After="3")
    script.answer(503, {"detail": "busy"}, Retry_After="120")
    script.answer(200, {"ok": True})
    delays: list[float] = []
    assert make_client(url, delays).get("/x/") == {"ok": True}
    assert delays == [3.0, 4.0]


def test_the_retries_run_out_into_a_server_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(503, {"detail": "The batch raced with a copy of itself; send it again."})
    delays: list[float] = []
    with pytest.raises(ServerError) as caught:
        make_client(url, delays, retries=2).get("/x/")
    assert caught.value.status == 503 and "send it again" in caught.value.detail
    assert len(script.requests) == 3 and delays == [0.5, 1.0]


def test_a_post_is_retried_on_503_but_not_on_502(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(503, {"detail": "busy"})
    script.answer(201, {"id": 1})
    delays: list[float] = []
    assert make_client(url, delays).post("/pipeline-runs/", {"project": "p"}) == {"id": 1}
    assert len(script.requests) == 2
    assert json.loads(script.requests[1]["body"]) == {"project": "p"}

    script.requests.clear()
    script.answers[:] = [(502, {}, None), (201, {}, {"id": 2})]
    with pytest.raises(ServerError) as caught:
        make_client(url, delays).post("/pipeline-runs/", {"project": "p"})
    # A proxy's 502 may hide a request the console did perform: resending could start a second run.
    assert caught.value.status == 502 and len(script.requests) == 1


def test_a_400_carries_the_field_messages(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(
        400,
        {
            "data_config.split": ["is the training fraction, between 0 and 1 (exclusive); got 1.5"],
            "traffic": [{}, {"weight": ["A valid integer is required."]}],
        },
    )
    with pytest.raises(ValidationError) as caught:
        make_client(url, []).post("/pipeline-runs/", {})
    error = caught.value
    assert error.status == 400
    assert error.fields == {
        "data_config.split": ["is the training fraction, between 0 and 1 (exclusive); got 1.5"],
        "traffic[1].weight": ["A valid integer is required."],
    }
    assert "data_config.split: is the training fraction" in str(error)
    assert len(script.requests) == 1  # a 400 is never retried
    # The id the call was sent (and logged) under, to quote to an operator.
    assert error.request_id == script.requests[0]["headers"]["X-Request-Id"]
    assert str(error).endswith(f"request id {error.request_id}")


def test_connection_failures_are_retried_for_reads_only() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    delays: list[float] = []
    client = make_client(f"http://127.0.0.1:{port}", delays, retries=2)
    with pytest.raises(requests.ConnectionError):
        client.get("/x/")
    assert delays == [0.5, 1.0]
    delays.clear()
    with pytest.raises(requests.ConnectionError):
        client.post("/x/", {})
    assert delays == []


def test_404_detail(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(404, {"detail": "No predictions are logged for deployment 9 in your projects."})
    with pytest.raises(NotFound, match="No predictions are logged for deployment 9"):
        make_client(url, []).get("/deployments/9/performance/")


def test_paginate_follows_next_links(server: tuple[str, Script]) -> None:
    url, script = server
    script.answer(200, {"count": 3, "next": f"{url}/api/v1/things/?page=2&page_size=2", "results": [1, 2]})
    script.answer(200, {"count": 3, "next": None, "results": [3]})
    assert list(make_client(url, []).paginate("/things/", {"kind": "a", "absent": None}, page_size=2)) == [1, 2, 3]
    assert script.requests[0]["path"] == "/api/v1/things/?page_size=2&kind=a"
    assert script.requests[1]["path"] == "/api/v1/things/?page=2&page_size=2"


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_URL", raising=False)
    monkeypatch.delenv("MLOPS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="MLOPS_URL"):
        Client()
    monkeypatch.setenv("MLOPS_URL", "http://console.example/")
    with pytest.raises(ConfigurationError, match="MLOPS_TOKEN"):
        Client()
    monkeypatch.setenv("MLOPS_TOKEN", "mlc_abc")
    monkeypatch.setenv("MLOPS_PROJECT", "demo")
    client = Client()
    assert client.api_url("/deployments/") == "http://console.example/api/v1/deployments/"
    assert client.project == "demo"


def test_the_sdk_imports_no_django() -> None:
    code = "import sys, mlops_sdk, mlops_sdk.cli; sys.exit(any(m.startswith('django') for m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(SDK_ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd="/", check=False).returncode == 0
