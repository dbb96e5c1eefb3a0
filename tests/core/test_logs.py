"""Log lines name their request: the request id (X-Request-Id), the user, the project and the deployment, in the
web process and in the Celery tasks the request queued; LOG_FORMAT=json writes them as one JSON object a line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import signals
from celery.contrib.testing.worker import start_worker

from mlops_console.celery import app
from mlops_console.logs import REQUEST_ID_HEADER, TASK_HEADER, json_formatter
from tests.core.log_urls import log_deployment_probe_task, log_probe_task
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def console_log() -> Iterator[io.StringIO]:
    """What the console's own log handler (settings.LOGGING) writes, as text lines."""
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


def lines_with(stream: io.StringIO, text: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if text in line]


@pytest.mark.django_db
def test_each_response_carries_a_request_id(client) -> None:
    generated = client.get("/healthz")[REQUEST_ID_HEADER]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert client.get("/healthz")[REQUEST_ID_HEADER] != generated
    assert client.get("/healthz", headers={REQUEST_ID_HEADER: "edge-42.a:b_c"})[REQUEST_ID_HEADER] == "edge-42.a:b_c"


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["two words", "x" * 129, "line\\nbreak", "{json}", "ünïcode"])
def test_an_ill_formed_incoming_request_id_is_replaced(client, bad: str) -> None:
    answered = client.get("/healthz", headers={REQUEST_ID_HEADER: bad})[REQUEST_ID_HEADER]
    assert answered != bad and len(answered) == 32


@pytest.mark.django_db
@pytest.mark.urls("tests.core.log_urls")
def test_the_request_and_the_task_it_queued_log_the_same_id(client, console_log: io.StringIO) -> None:
    client.force_login(UserFactory(username="ada"))
    response = client.get("/probe/", headers={REQUEST_ID_HEADER: "req-123"})
    assert response[REQUEST_ID_HEADER] == "req-123"
    (view_line,) = lines_with(console_log, "view says hello")
    (task_line,) = lines_with(console_log, "task says hello")
    assert "[req-123]" in view_line and "[req-123]" in task_line
    assert "(signed in: True)" in view_line


@pytest.mark.django_db
@pytest.mark.urls("tests.core.log_urls")
def test_json_lines_carry_every_field(client, console_log: io.StringIO) -> None:
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    text_formatter = handler.formatter
    handler.setFormatter(json_formatter())
    try:
        client.force_login(UserFactory(username="ada"))
        client.get("/probe/", headers={REQUEST_ID_HEADER: "req-json"})
    finally:
        handler.setFormatter(text_formatter)
    records = [json.loads(line) for line in console_log.getvalue().splitlines()]
    view = next(r for r in records if r["message"].startswith("view says hello"))
    task = next(r for r in records if r["message"] == "task says hello")
    for record in (view, task):
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert record["level"] == "INFO" and record["logger"] == "tests.log_probe"
        assert (record["request_id"], record["user"], record["project"], record["deployment"]) == (
            "req-json",
            "ada",
            "fraud",
            "7",
        )


@pytest.mark.django_db
@pytest.mark.urls("tests.core.log_urls")
def test_a_project_or_deployment_in_the_url_names_the_log_lines(client, console_log: io.StringIO) -> None:
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    text_formatter = handler.formatter
    handler.setFormatter(json_formatter())
    try:
        client.get("/projects/fraud/")
        client.get("/deployments/12/")
        log_deployment_probe_task.delay(5)
        log_deployment_probe_task.delay(deployment_id=6)
    finally:
        handler.setFormatter(text_formatter)
    records = [json.loads(line) for line in console_log.getvalue().splitlines()]
    pages = [(r["project"], r["deployment"]) for r in records if r["message"] == "named page says hello"]
    assert pages == [("fraud", None), (None, "12")]
    tasks = [r["deployment"] for r in records if r["message"] == "deployment task runs"]
    assert tasks == ["5", "6"]


@pytest.fixture
def real_worker() -> Iterator[None]:
    """A Celery worker thread consuming the test broker (Redis), the way `celery worker` runs tasks (started before
    console_log: starting it sets logging up again)."""
    app.conf.task_always_eager = False
    try:
        with start_worker(app, pool="solo", loglevel="INFO", perform_ping_check=False, shutdown_timeout=30):
            yield
    finally:
        app.conf.task_always_eager = True


# No database here: the worker thread's Django fixup closes connections, which would break the test transaction.
# The anonymous request reads no session, so the page needs none.
@pytest.mark.urls("tests.core.log_urls")
def test_a_worker_takes_the_context_from_the_task_header(real_worker: None, client, console_log: io.StringIO) -> None:
    published: list[dict] = []

    def keep_headers(headers: dict | None = None, **_: object) -> None:
        published.append(dict(headers or {}))

    signals.after_task_publish.connect(keep_headers, weak=False)
    try:
        client.get("/probe/", headers={REQUEST_ID_HEADER: "req-worker"})
    finally:
        signals.after_task_publish.disconnect(keep_headers)
    assert published[0][TASK_HEADER] == {"request_id": "req-worker", "project": "fraud", "deployment": "7"}
    deadline = time.monotonic() + 20
    while not lines_with(console_log, "task says hello") and time.monotonic() < deadline:
        time.sleep(0.1)
    (task_line,) = lines_with(console_log, "task says hello")
    assert "[req-worker]" in task_line
    # The next task in the same worker thread, queued outside any request, inherits nothing.
    log_probe_task.delay("alone")
    deadline = time.monotonic() + 20
    while not lines_with(console_log, "task says alone") and time.monotonic() < deadline:
        time.sleep(0.1)
    (alone_line,) = lines_with(console_log, "task says alone")
    assert "[None]" in alone_line


def run_console_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "mlops_console.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", f"import django, logging; django.setup(); {code}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_log_format_json_writes_one_object_per_line() -> None:
    result = run_console_python("logging.getLogger('probe').warning('one %s', 'line')", LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "probe" in line]
    record = json.loads(line)
    assert record["message"] == "one line" and record["level"] == "WARNING" and record["logger"] == "probe"
    assert record["request_id"] is None and "time" in record


def test_log_format_text_is_for_people_and_a_bad_value_is_refused() -> None:
    result = run_console_python("logging.getLogger('probe').warning('one %s', 'line')", LOG_FORMAT="text")
    (line,) = [line for line in result.stderr.splitlines() if "probe" in line]
    assert line.endswith("WARNING probe [None]: one line")
    refused = run_console_python("pass", LOG_FORMAT="xml")
    assert refused.returncode != 0 and "LOG_FORMAT must be text or json" in refused.stderr
