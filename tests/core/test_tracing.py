"""OpenTelemetry: off (no instrumentation, no exporter) without OTEL_EXPORTER_OTLP_ENDPOINT; on, a request and the
task it queued are one trace, and database calls are spans. Spans go to an in-memory exporter here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from celery.contrib.testing.worker import start_worker
from django.test import Client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mlops_console.celery import app
from mlops_console.tracing import instrument, uninstrument

ROOT = Path(__file__).resolve().parents[2]


def test_without_an_endpoint_nothing_is_instrumented_or_exported() -> None:
    # redis-py imports the OpenTelemetry API itself when it is installed; the console loads no instrumentation,
    # no exporter and no tracer provider of its own.
    code = (
        "import sys, mlops_console.wsgi; from django.conf import settings; "
        "from mlops_console.tracing import setup_tracing; assert not setup_tracing(); "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.instrumentation', "
        "'opentelemetry.exporter', 'opentelemetry.sdk.trace')))); "
        "print([m for m in settings.MIDDLEWARE if 'opentelemetry' in m])"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(provider)
    try:
        yield exporter
    finally:
        uninstrument()


@pytest.fixture
def real_worker(spans: InMemorySpanExporter) -> Iterator[None]:
    """A Celery worker thread on the test broker (Redis), so the task message really carries the trace context."""
    app.conf.task_always_eager = False
    try:
        with start_worker(app, pool="solo", loglevel="INFO", perform_ping_check=False, shutdown_timeout=30):
            yield
    finally:
        app.conf.task_always_eager = True


def wait_for(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [span for span in exporter.get_finished_spans() if span.kind == kind]
        if found:
            return found
        time.sleep(0.1)
    return []


# No database: the worker thread's Django fixup closes connections (see tests/core/test_logs.py).
@pytest.mark.urls("tests.core.log_urls")
def test_a_request_and_the_task_it_queued_are_one_trace(real_worker: None, spans: InMemorySpanExporter) -> None:
    # A new client loads the middleware again, now with the instrumentation's.
    assert Client().get("/probe/").status_code == 200
    (server,) = wait_for(spans, SpanKind.SERVER)
    (consumer,) = wait_for(spans, SpanKind.CONSUMER)
    (producer,) = [span for span in spans.get_finished_spans() if span.kind == SpanKind.PRODUCER]
    assert server.name == "GET probe/" and server.attributes["http.status_code"] == 200
    assert "tests.log_probe" in consumer.name and "tests.log_probe" in producer.name
    trace_ids = {span.context.trace_id for span in (server, producer, consumer)}
    assert trace_ids == {server.context.trace_id}
    assert producer.parent.span_id == server.context.span_id
    assert consumer.parent.span_id == producer.context.span_id


def test_database_calls_are_spans(spans: InMemorySpanExporter) -> None:
    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()
    (query,) = [span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT]
    assert query.attributes["db.system"] == "postgresql"
    assert query.attributes["db.statement"] == "SELECT 1"
