"""Retention benchmark (Postgres): delete a day of 1,000,000 prediction rows while model servers keep shipping.

A day of rows 31 days old is generated in the database (INSERT … SELECT generate_series, analysed), beside
the rows of the last minutes. gunicorn (2 workers) serves the console; 4 senders POST batches of 500 1-row
events for a fixed time alone (the baseline), then again while `predictions_retention_apply` (what the beat
task runs) deletes the old day in bounded batches. Reported: the delete's duration and rows/s, ingest
events/s alone and during the deletes, and the load average (the 2 CPU cores are shared).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from django.db import connection

from apps.deployments import services as deployment_services
from apps.telemetry import services
from apps.telemetry.models import PredictionLog
from tests.bench.test_prediction_ingest_bench import BATCH, SENDERS, Console, make_event
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

DAY_ROWS = 1_000_000
BASELINE_SECONDS = 10.0
WARM_UP_SECONDS = 5.0

GENERATE_DAY = """
INSERT INTO telemetry_predictionlog (deployment_id, project_id, model_version_id, request_id, shadow, event_id,
    pinned, inputs, outputs, probabilities, latency_ms, status, error, request_key, created_at, received_at)
SELECT %(deployment)s, %(project)s, %(version)s, 'old-' || i, false, 'e-' || i, false,
    '{"x": [1.5], "y": [2.5]}'::jsonb, '["setosa"]'::jsonb, NULL, 1.0 + i %% 50, 200, '', '',
    date_trunc('day', now()) - interval '31 days' + i * interval '86399 milliseconds' / 1000, now()
FROM generate_series(1, %(rows)s) AS i
"""


def ingest_while(
    port: int, token: str, deployment_id: int, version_id: int, busy: threading.Event
) -> tuple[int, float]:
    """Senders POST fresh batches until `busy` is cleared; returns (events accepted, seconds)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent = [0] * SENDERS
    failures: list[int] = []

    def sender(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while busy.is_set():
            now = datetime.now(UTC)
            body = orjson.dumps({"events": [make_event(deployment_id, version_id, 1, now, i) for i in range(BATCH)]})
            conn.request("POST", "/api/v1/ingest/predictions/", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                failures.append(response.status)
            else:
                sent[slot] += BATCH
        conn.close()

    threads = [threading.Thread(target=sender, args=(slot,)) for slot in range(SENDERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    return sum(sent), time.perf_counter() - started


def test_deleting_a_day_of_a_million_rows_while_ingesting(project: Any, owner: Any) -> None:
    model = RegisteredModelFactory(project=project, name="iris")
    version = ModelVersionFactory(model=model, number=1)
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)
    params = {"deployment": deployment.pk, "project": project.pk, "version": version.pk, "rows": DAY_ROWS}
    with connection.cursor() as cursor:
        cursor.execute(GENERATE_DAY, params)
        cursor.execute("ANALYZE telemetry_predictionlog")
    load_at_start = os.getloadavg()
    console = Console()
    try:
        busy = threading.Event()
        # Warm up both workers (imports, connections, the table's pages) outside the measure.
        busy.set()
        threading.Timer(WARM_UP_SECONDS, busy.clear).start()
        ingest_while(console.port, deployment.ingest_token(), deployment.pk, version.pk, busy)
        busy.set()
        threading.Timer(BASELINE_SECONDS, busy.clear).start()
        alone = ingest_while(console.port, deployment.ingest_token(), deployment.pk, version.pk, busy)

        outcome: dict[str, Any] = {}
        busy.set()
        senders = threading.Thread(
            target=lambda: outcome.update(
                during=ingest_while(console.port, deployment.ingest_token(), deployment.pk, version.pk, busy)
            )
        )
        senders.start()
        time.sleep(1)  # the senders are under way
        started = time.perf_counter()
        deleted = services.predictions_retention_apply()
        delete_seconds = time.perf_counter() - started
        busy.clear()
        senders.join()
    finally:
        console.close()
    assert deleted["log_rows"] == DAY_ROWS
    assert not PredictionLog.objects.filter(request_id__startswith="old-").exists()
    during = outcome["during"]
    print()
    print(
        f"Retention: a day of {DAY_ROWS:,} rows deleted in batches of {services.RETENTION_BATCH_ROWS:,} while ingesting"
    )
    print(
        "load average (1, 5, 15 min) at start / end: "
        + " / ".join(" ".join(f"{value:.2f}" for value in sample) for sample in (load_at_start, os.getloadavg()))
    )
    print(f"delete: {delete_seconds:.1f} s ({DAY_ROWS / delete_seconds:,.0f} rows/s)")
    print(f"ingest alone:          {alone[0] / alone[1]:>8,.0f} events/s ({alone[0]:,} events in {alone[1]:.1f} s)")
    print(f"ingest during deletes: {during[0] / during[1]:>8,.0f} events/s ({during[0]:,} events in {during[1]:.1f} s)")
