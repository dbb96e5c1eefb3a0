"""OpenTelemetry traces of web requests, Celery tasks and database calls, on only when an OTLP endpoint is set.

With `OTEL_EXPORTER_OTLP_ENDPOINT` unset no instrumentation, exporter or tracer provider is loaded. Set, spans go
to it over OTLP/HTTP (the exporter reads the standard OTEL_* variables: headers, timeouts...), and a task queued by
a request joins the request's trace: the Celery instrumentation carries the trace context in the task message.
"""

from __future__ import annotations

import os
from typing import Any


def instrument(provider: Any) -> None:
    """Web requests, Celery tasks and psycopg2 queries report spans to `provider` (a TracerProvider)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    DjangoInstrumentor().instrument(tracer_provider=provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    Psycopg2Instrumentor().instrument(tracer_provider=provider, skip_dep_check=True)


def uninstrument() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    DjangoInstrumentor().uninstrument()
    CeleryInstrumentor().uninstrument()
    Psycopg2Instrumentor().uninstrument()


def setup_tracing() -> bool:
    """Turns tracing on when OTEL_EXPORTER_OTLP_ENDPOINT is set; says whether it did.

    Called before the WSGI application loads its middleware and in each Celery worker process (after the fork:
    the exporter's thread would not survive it).
    """
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "mlops-console")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument(provider)
    return True
