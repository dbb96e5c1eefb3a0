"""Ingest benchmark: a 1,000,000-row × 20-column CSV through the upload code path. Run with `make bench`.

Each measured run is a subprocess, so its peak RSS is its own: the upload handler streams and hashes
the file, `dataset_version_create` checks its structure and stores it, and `dataset_version_profile`
(what the Celery task calls) verifies, reads, profiles and validates it. The baseline, in the same
run, is plain `pandas.read_csv` + `describe(include="all")` of the same file.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from django.db import connection

from apps.datasets.services import dataset_update
from tests.factories import DatasetFactory

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1_000_000
TARGET_SECONDS = 15.0
TARGET_RSS_BYTES = 2 * 1024**3
UPLOAD_CHUNK = 64 * 1024  # Django's upload handler chunk size

INGEST = r"""
import json, os, resource, sys, time
from pathlib import Path
import django
django.setup()
from apps.core.models import AuditEntry
from apps.core.uploads import HashingUploadHandler
from apps.datasets import services
from apps.datasets.models import Dataset

source, dataset_id, chunk = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Profiling is timed on its own below, through the same service the Celery task calls.
services._enqueue_profile = lambda version_id: None
timings = {}

started = time.perf_counter()
handler = HashingUploadHandler()
handler.new_file("file", source.name, "text/csv", source.stat().st_size, None)
with open(source, "rb") as handle:
    offset = 0
    while data := handle.read(chunk):
        handler.receive_data_chunk(data, offset)
        offset += len(data)
upload = handler.file_complete(offset)
timings["upload: stream to disk + sha256"] = time.perf_counter() - started

started = time.perf_counter()
version, created = services.dataset_version_create(
    dataset=Dataset.objects.get(pk=dataset_id), path=Path(upload.temporary_file_path()),
    file_name=source.name, sha256=upload.sha256, size=upload.size, actor=None,
)
timings["structure check + store + record"] = time.perf_counter() - started
upload.close()

started = time.perf_counter()
version = services.dataset_version_profile(version_id=version.pk)
total = time.perf_counter() - started
phases = AuditEntry.objects.get(action="dataset_version.profiled", object_id=str(version.pk)).after["seconds"]
timings["worker: verify sha256"] = total - sum(phases.values())
timings["worker: read (pyarrow)"] = phases["read"]
timings["worker: schema + profile"] = phases["profile"]
timings["worker: validate"] = phases["validate"]
print(json.dumps({
    "timings": timings,
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "status": version.status, "rows": version.row_count, "columns": version.column_count,
    "validation": version.validation["summary"], "duplicates": version.profile["duplicate_rows"],
}))
"""

BASELINE = r"""
import json, resource, sys, time
import pandas as pd
timings = {}
started = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
timings["pandas.read_csv"] = time.perf_counter() - started
started = time.perf_counter()
frame.describe(include="all")
timings["DataFrame.describe(include='all')"] = time.perf_counter() - started
print(json.dumps({"timings": timings, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def generate_csv(path: Path) -> None:
    """12 float columns (3 with 2% missing), 3 integer columns and 5 categorical columns."""
    rng = np.random.default_rng(2024)
    columns: dict[str, np.ndarray] = {}
    for index in range(12):
        values = rng.normal(index * 10, 1 + index, ROWS)
        if index % 4 == 0:
            values[rng.random(ROWS) < 0.02] = np.nan
        columns[f"num_{index}"] = values
    for index in range(3):
        columns[f"int_{index}"] = rng.integers(0, 100 * (index + 1), ROWS)
    words = np.array(["north", "south", "east", "west", "centre", "online", "partner", "other"])
    for index in range(5):
        columns[f"cat_{index}"] = words[rng.integers(0, 3 + index, ROWS)]
    pcsv.write_csv(pa.table(columns), path)


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def run_child(script: str, *args: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(title: str, figures: dict) -> float:
    total = sum(figures["timings"].values())
    print(f"\n{title}")
    for phase, seconds in figures["timings"].items():
        print(f"  {phase:<40} {seconds:7.2f} s")
    print(f"  {'total':<40} {total:7.2f} s    peak RSS {figures['peak_rss'] / 1024**2:,.0f} MiB")
    return total


def test_ingest_one_million_rows(tmp_path: Path, project: object, owner: object, settings: object) -> None:
    source = tmp_path / "bench_1m_x_20.csv"
    generate_csv(source)
    dataset = DatasetFactory(project=project, name="bench")
    rules = {
        "columns": {
            "num_0": {"max_null_rate": 0.05},
            "int_0": {"min": 0, "max": 99, "blocking": True},
            "cat_0": {"allowed": ["north", "south", "east"]},
        },
        "max_duplicate_rate": 0.0,
    }
    dataset_update(dataset=dataset, rules=rules, actor=owner)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mlops_console.settings",
        "DATABASE_URL": database_url(),
        "ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
    }

    ours = run_child(INGEST, str(source), str(dataset.pk), str(UPLOAD_CHUNK), env=env)
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    baseline = run_child(BASELINE, str(source), env=env)

    size = source.stat().st_size
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{ROWS:,} rows × 20 columns, {size / 1024**2:,.0f} MiB of CSV; {os.cpu_count()} CPUs, load average {load}")
    total = report("Upload path (upload handler → dataset_version_create → dataset_version_profile)", ours)
    baseline_total = report("Baseline (pandas.read_csv + describe)", baseline)
    memory_ratio = ours["peak_rss"] / baseline["peak_rss"]
    print(f"\n  ratio to baseline: {total / baseline_total:.2f}× time, {memory_ratio:.2f}× memory")

    assert ours["status"] == "ready" and ours["rows"] == ROWS and ours["columns"] == 20
    assert ours["validation"]["fail"] == 0, ours["validation"]
    assert children_peak == ours["peak_rss"], "RUSAGE_CHILDREN agrees with the child's own figure"
    assert total < TARGET_SECONDS, f"ingest took {total:.1f} s; the target is {TARGET_SECONDS:.0f} s"
    assert ours["peak_rss"] < TARGET_RSS_BYTES, f"peak RSS {ours['peak_rss'] / 1024**3:.2f} GiB; the target is 2 GiB"
