"""The drift job end to end (Postgres): a window of logged predictions × 20 features read from the prediction
log in batches, tested against a stored reference, the report stored. Run with `make bench`.

`DRIFT_JOB_BENCH_ROWS` (default 1,000,000) input rows are logged through telemetry's ingest service (COPY),
in events of 500 rows, over the last hour; the reference is a 10,000-row window of traffic logged the hour
before. Printed: the job's wall time and the process's peak resident memory during it (VmHWM, reset just
before the job by writing 5 to /proc/self/clear_refs), with the load average, since the CPU is shared.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from apps.core.choices import JobStatus
from apps.deployments import services as deployment_services
from apps.monitoring import services
from apps.monitoring.choices import ReferenceSource
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]
ROWS = int(os.environ.get("DRIFT_JOB_BENCH_ROWS", "1000000"))
FEATURES = 20
ROWS_PER_EVENT = 500
EVENTS_PER_BATCH = 20


def peak_rss() -> int:
    """The process's peak resident memory since the last call (bytes): VmHWM, then reset to the current RSS."""
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return peak


def log(deployment: Any, version_id: int, rows: int, start: Any, shift: float, tag: str) -> None:
    rng = np.random.default_rng(len(tag))
    source = IngestSource(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        version_ids=frozenset(deployment.registered_model.versions.values_list("pk", flat=True)),
    )
    n_events = rows // ROWS_PER_EVENT
    seconds = 3000 / max(n_events, 1)
    for first in range(0, n_events, EVENTS_PER_BATCH):
        events = []
        for index in range(first, min(first + EVENTS_PER_BATCH, n_events)):
            inputs = {f"f{i:02d}": rng.normal(shift * (i % 2), 1, ROWS_PER_EVENT).round(6).tolist() for i in range(15)}
            inputs |= {f"c{i}": rng.choice(["a", "b", "c", "d"], ROWS_PER_EVENT).tolist() for i in range(5)}
            events.append(
                {
                    "request_id": f"{tag}-{index}",
                    "deployment_id": deployment.pk,
                    "version_id": version_id,
                    "inputs": inputs,
                    "latency_ms": 3.0,
                    "status": 200,
                    "timestamp": (start + timedelta(seconds=index * seconds)).isoformat(),
                }
            )
        assert predictions_ingest(source=source, events=events).rejected == []


def test_drift_job_over_a_window_of_logged_predictions(project: Any, owner: Any, monkeypatch: Any) -> None:
    # The job is run (and timed) here, not by the task its commit would queue.
    monkeypatch.setattr(services, "enqueue_on_commit", lambda task, *args: None)
    signature = {
        "inputs": [{"name": f"f{i:02d}", "type": "number"} for i in range(15)]
        + [{"name": f"c{i}", "type": "string"} for i in range(5)],
        "outputs": {"type": "classes", "classes": ["a", "b"]},
    }
    version = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="bench"), signature=signature)
    deployment = deployment_services.deployment_create(
        project=project, name="bench", actor=owner, model_version=version
    )
    now = timezone.now()
    log(deployment, version.pk, 10_000, now - timedelta(hours=2), 0.0, "reference")
    started = time.perf_counter()
    log(deployment, version.pk, ROWS, now - timedelta(hours=1), 0.3, "current")
    ingest_seconds = time.perf_counter() - started
    services.drift_reference_build(
        deployment=deployment,
        source=ReferenceSource.TRAFFIC,
        actor=owner,
        window_start=now - timedelta(hours=2),
        window_end=now - timedelta(hours=1),
    )
    report = services.drift_report_run(deployment=deployment, actor=owner, start=now - timedelta(hours=1), end=now)
    baseline = peak_rss()
    started = time.perf_counter()
    report = services.drift_report_execute(report_id=report.pk)
    seconds = time.perf_counter() - started
    peak = peak_rss()
    assert report.status == JobStatus.SUCCEEDED and report.n_rows == ROWS
    # The targets at 1,000,000 rows: within 60 s and 1.5 GB peak.
    assert seconds < 60 * ROWS / 1_000_000 and peak < 1.5e9 * max(1.0, ROWS / 1_000_000)
    print(
        f"\ndrift job, {ROWS:,} rows × {FEATURES} features: {seconds:.1f} s, peak RSS {peak / 2**20:.0f} MiB "
        f"(the process held {baseline / 2**20:.0f} MiB before) "
        f"(ingest {ingest_seconds:.1f} s; load average {os.getloadavg()[0]:.1f}); "
        f"{report.result['n_drifted']} of {report.result['n_tested']} columns drifted"
    )
