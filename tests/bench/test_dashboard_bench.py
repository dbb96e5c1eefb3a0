"""Dashboard benchmark (Postgres): every dashboard and performance request with 10,000,000 logged predictions.

The prediction log is loaded with COPY (`DASHBOARD_BENCH_ROWS` rows, default 10,000,000), spread over the last
30 days as a canary split: v1 live 80%, v2 live 15%, v2 shadow 5%; 1% of answers are 5xx; latencies lognormal.
Its per-minute rollups are then built from it in SQL (as ingest would have written them), and 1% of the live
predictions get a label (INSERT … SELECT of a sample). Each request runs in this process through Django's test
client, so the time is the server's (middleware, view, queries, template), not the network's: one warm-up,
then the median and the worst of 5 (3 for the performance requests). Target: under 500 ms each, asserted for
every request (dashboards, performance page and APIs); the statements of the 30-day performance page are
printed with the plan of the slowest. The CPU is shared: the load average is printed beside the figures.
Run it at full size at most once on a shared machine.

    make bench  # or: pytest tests/bench/test_dashboard_bench.py -s -p no:cacheprovider
"""

from __future__ import annotations

import io
import os
import statistics
import time
from typing import Any

import numpy as np
import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.deployments import services as deployment_services
from apps.telemetry import services as telemetry_services
from apps.telemetry.models import BUCKET_FIELDS, LATENCY_BUCKETS_MS, PredictionLabel
from tests.conftest import client_for
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

ROWS = int(os.environ.get("DASHBOARD_BENCH_ROWS", "10000000"))
CHUNK = 200_000
LABELLED_SHARE = 0.01
TARGET_MS = 500.0
REPEATS = 5
PERFORMANCE_REPEATS = 3
LOG_COLUMNS = (
    "deployment_id, project_id, model_version_id, request_id, shadow, event_id, pinned, inputs, outputs, "
    "probabilities, latency_ms, status, error, request_key, created_at, received_at"
)


class ChunkReader(io.RawIOBase):
    """A file COPY reads from, filled chunk by chunk by a generator (the rows never sit in memory at once)."""

    def __init__(self, chunks: Any) -> None:
        self.chunks, self.buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def log_chunks(deployment_id: int, project_id: int, v1: int, v2: int, end_epoch: float) -> Any:
    rng = np.random.default_rng(11)
    span = 30 * 86_400
    for offset in range(0, ROWS, CHUNK):
        n = min(CHUNK, ROWS - offset)
        draw = rng.uniform(0, 1, n)
        versions = np.where(draw < 0.8, v1, v2)
        shadow = draw >= 0.95
        seconds = end_epoch - rng.uniform(0, span, n)
        latency = rng.lognormal(3, 0.8, n)
        status = np.where(rng.uniform(0, 1, n) < 0.01, 500, 200)
        p_b = rng.uniform(0, 1, n)
        stamps = np.datetime_as_string((seconds * 1e6).astype("datetime64[us]"), unit="us")
        lines = [
            f"{deployment_id}\t{project_id}\t{versions[i]}\tb{offset + i}\t{'t' if shadow[i] else 'f'}\t\tf\t"
            f'{{"x": [{p_b[i]:.3f}]}}\t["{"b" if p_b[i] > 0.5 else "a"}"]\t[[{1 - p_b[i]:.3f}, {p_b[i]:.3f}]]\t'
            f"{latency[i]:.3f}\t{status[i]}\t\t\t{stamps[i]}+00\t{stamps[i]}+00"
            for i in range(n)
        ]
        yield ("\n".join(lines) + "\n").encode()


ROLLUPS = f"""
INSERT INTO telemetry_predictionrollup (deployment_id, project_id, model_version_id, shadow, pinned, minute, requests,
    errors,
    latency_count, latency_sum_ms, {", ".join(BUCKET_FIELDS)})
SELECT deployment_id, project_id, COALESCE(model_version_id, 0), shadow, pinned, date_trunc('minute', created_at),
    count(*),
    count(*) FILTER (WHERE status >= 500), count(latency_ms), COALESCE(sum(latency_ms), 0),
    {
    ", ".join(
        f"count(*) FILTER (WHERE latency_ms > {lo} AND latency_ms <= {hi})"
        for lo, hi in zip((0, *LATENCY_BUCKETS_MS[:-1]), LATENCY_BUCKETS_MS, strict=True)
    )
}, count(*) FILTER (WHERE latency_ms > {LATENCY_BUCKETS_MS[-1]})
FROM telemetry_predictionlog GROUP BY 1, 2, 3, 4, 5, 6
"""

LABELS = """
INSERT INTO telemetry_predictionlabel (deployment_id, project_id, model_version_id, request_id, kind, truth, source,
    received_at)
SELECT deployment_id, project_id, model_version_id, request_id, 'label',
    CASE WHEN random() < 0.9 THEN outputs ELSE '["a"]'::jsonb END, 'api', created_at + interval '1 hour'
FROM telemetry_predictionlog TABLESAMPLE BERNOULLI (%s) REPEATABLE (7) WHERE NOT shadow AND status < 400
"""


def load(deployment: Any, v1: Any, v2: Any) -> dict[str, float]:
    timings = {}
    started = time.perf_counter()
    chunks = log_chunks(deployment.pk, deployment.project_id, v1.pk, v2.pk, timezone.now().timestamp())
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY telemetry_predictionlog ({LOG_COLUMNS}) FROM STDIN", ChunkReader(chunks), size=1 << 20
        )
        timings["COPY prediction log"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute(ROLLUPS)
        timings["rollups (INSERT … SELECT … GROUP BY minute)"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute(LABELS, [LABELLED_SHARE * 100])
        timings["labels (1% of live answers)"] = time.perf_counter() - started
        started = time.perf_counter()
        labelled = set(PredictionLabel.objects.values_list("deployment_id", "request_id"))
        telemetry_services.labelled_predictions_record(labelled)
        timings["the record of labelled predictions (as feedback writes it)"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute(
            "ANALYZE telemetry_predictionlog, telemetry_predictionrollup, telemetry_predictionlabel, "
            "telemetry_labelledprediction"
        )
        timings["ANALYZE"] = time.perf_counter() - started
    return timings


def served_ms(client: Any, url: str, repeats: int = REPEATS) -> list[float]:
    client.get(url)  # warm-up: template and plan caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return times


def test_dashboard_requests_with_ten_million_predictions(project: Any, owner: Any) -> None:
    model = RegisteredModelFactory(project=project, name="iris")
    v1 = ModelVersionFactory(model=model, number=1)
    v2 = ModelVersionFactory(model=model, number=2)
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=v1)
    load_times = load(deployment, v1, v2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_predictionlog")
        (rows,) = cursor.fetchone()
        cursor.execute("SELECT count(*), sum(requests) FROM telemetry_predictionrollup")
        rollups, rolled = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM telemetry_predictionlabel")
        (labels,) = cursor.fetchone()
    assert rows == ROWS and rolled == ROWS

    page = Client()
    page.force_login(owner)
    api = client_for(owner)
    base = f"/monitoring/deployments/{deployment.pk}"
    requests = [(page, "/monitoring/deployments/")]
    for window in ("1h", "24h", "7d", "30d"):
        requests += [
            (page, f"{base}/?window={window}"),
            (page, f"{base}/live/?window={window}"),
            (page, f"{base}/?window={window}&version=2"),
            (api, f"/api/v1/deployments/{deployment.pk}/metrics/?window={window}"),
        ]
    performance = [(page, f"{base}/performance/?window={window}") for window in ("1h", "24h", "7d", "30d")]
    for window in ("1h", "24h", "7d", "30d"):
        performance += [
            (api, f"/api/v1/deployments/{deployment.pk}/performance/?window={window}"),
            (api, f"/api/v1/deployments/{deployment.pk}/performance-trend/?window={window}"),
        ]
    results = [(url, served_ms(client, url)) for client, url in requests]
    # The performance requests read raw rows (labels join single predictions): fewer repeats.
    results += [(url, served_ms(client, url, repeats=PERFORMANCE_REPEATS)) for client, url in performance]

    print()
    print(f"Dashboard benchmark: {rows:,} logged predictions over 30 days, {rollups:,} rollup rows, {labels:,} labels")
    print("load average (1, 5, 15 min): " + " ".join(f"{value:.2f}" for value in os.getloadavg()))
    for name, seconds in load_times.items():
        print(f"  load: {name:<48} {seconds:8.1f} s")
    print(f"{'request':<72} {'median ms':>10} {'worst ms':>10}")
    for url, times in results:
        flag = "" if statistics.median(times) < TARGET_MS else "  over target"
        print(f"{url:<72} {statistics.median(times):>10.1f} {max(times):>10.1f}{flag}")
    # The statements of the longest performance request, slowest first, and the plan of the slowest.
    with CaptureQueriesContext(connection) as queries:
        page.get(f"{base}/performance/?window=30d")
    timed = sorted(queries.captured_queries, key=lambda query: -float(query["time"]))
    print(f"statements of {base}/performance/?window=30d (slowest first):")
    for query in timed[:6]:
        print(f"  {float(query['time']) * 1000:8.1f} ms  {query['sql'][:110]}")
    with transaction.atomic(), connection.cursor() as cursor:
        for query in queries.captured_queries:  # the planner settings the statement ran with
            if query["sql"].startswith("SET LOCAL"):
                cursor.execute(query["sql"])
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + timed[0]["sql"])  # the SQL as sent, values in place
        print("\n".join(f"    {line}" for (line,) in cursor.fetchall()))
    slow = [url for url, times in results if statistics.median(times) >= TARGET_MS]
    assert slow == [], f"dashboard requests over {TARGET_MS} ms: {slow}"
