"""Prometheus metrics, written by hand (the text exposition format is small and `prometheus_client` is not a
dependency of the model server image).

Each worker process counts in memory. A scrape lands on one worker, so when the server runs several, each
worker also writes a snapshot of its counts to a shared folder about once a second and `/metrics` adds up
the snapshots of all of them: counters stay monotonic across worker restarts and graceful reloads, because
the snapshots of exited workers are kept (folded into one archive file so the folder does not grow).
Gauges are only taken from workers that are still alive.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SNAPSHOT_INTERVAL_SECONDS = 1.0
_ARCHIVE = "archive.json"

Labels = tuple[tuple[str, str], ...]

# name -> (type, help). Histograms also name their buckets.
METRICS: dict[str, tuple[str, str]] = {
    "model_server_requests_total": ("counter", "Prediction requests by model version, protocol and HTTP status."),
    "model_server_request_errors_total": ("counter", "Prediction requests answered with an error (4xx or 5xx)."),
    "model_server_request_duration_seconds": ("histogram", "Time to answer a prediction request, per version."),
    "model_server_batch_rows": ("histogram", "Rows per prediction request."),
    "model_server_shadow_predictions_total": ("counter", "Predictions made by the shadow version, by status."),
    "model_server_shadow_skipped_total": ("counter", "Shadow copies skipped because the shadow queue was full."),
    "model_server_events_shipped_total": ("counter", "Prediction events accepted by the console."),
    "model_server_events_dropped_total": ("counter", "Prediction events dropped, by reason."),
    "model_server_event_buffer_depth": ("gauge", "Prediction events waiting to be shipped."),
    "model_server_event_buffer_bytes": ("gauge", "Estimated encoded size of the events waiting to be shipped."),
}
HISTOGRAM_BUCKETS = {
    "model_server_request_duration_seconds": LATENCY_BUCKETS,
    "model_server_batch_rows": BATCH_BUCKETS,
}


class Metrics:
    """Counters, gauges and histograms of one process; thread-safe (request, shadow and shipper threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], list[float]] = {}

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        key = (name, labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    def set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self._values[(name, labels)] = value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        buckets = HISTOGRAM_BUCKETS[name]
        key = (name, labels)
        with self._lock:
            counts = self._histograms.get(key)
            if counts is None:
                # One count per bucket (not cumulative), then +Inf, then the sum.
                counts = self._histograms[key] = [0.0] * (len(buckets) + 2)
            counts[bisect.bisect_left(buckets, value)] += 1
            counts[-1] += value

    def counter_values(self, name: str, label: str) -> dict[str, float]:
        """This process's values of metric `name`, by the value of its label `label`."""
        with self._lock:
            return {
                dict(labels).get(label, ""): value for (metric, labels), value in self._values.items() if metric == name
            }

    def snapshot(self) -> dict:
        """A JSON-able copy of every value, for the shared folder and for rendering."""
        with self._lock:
            values = [[name, list(map(list, labels)), value] for (name, labels), value in self._values.items()]
            histograms = [[name, list(map(list, labels)), list(c)] for (name, labels), c in self._histograms.items()]
        return {"values": values, "histograms": histograms}


def _merge(snapshots: Iterable[tuple[Mapping, bool]]) -> tuple[dict, dict]:
    """Add up snapshots; the flag says whether the gauges of that snapshot count (its worker is alive)."""
    values: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], list[float]] = {}
    for snapshot, alive in snapshots:
        for name, labels, value in snapshot.get("values", []):
            if METRICS.get(name, ("gauge",))[0] == "gauge" and not alive:
                continue
            key = (name, tuple(tuple(pair) for pair in labels))
            values[key] = values.get(key, 0.0) + value
        for name, labels, counts in snapshot.get("histograms", []):
            key = (name, tuple(tuple(pair) for pair in labels))
            total = histograms.setdefault(key, [0.0] * len(counts))
            for i, count in enumerate(counts):
                total[i] += count
    return values, histograms


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    parts = [f'{key}="{_escape(str(value))}"' for key, value in labels]
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(values: Mapping, histograms: Mapping, extra: Iterable[str] = ()) -> str:
    """Prometheus text exposition (format 0.0.4) of merged values and histograms, plus pre-rendered lines."""
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        if kind == "histogram":
            buckets = HISTOGRAM_BUCKETS[name]
            for (metric, labels), counts in sorted(histograms.items()):
                if metric != name:
                    continue
                cumulative = 0.0
                for bound, count in zip((*buckets, "+Inf"), counts[:-1], strict=True):
                    cumulative += count
                    le = bound if isinstance(bound, str) else _number(bound)
                    lines.append(f"{name}_bucket{_labels_text((*labels, ('le', le)))} {_number(cumulative)}")
                lines.append(f"{name}_sum{_labels_text(labels)} {_number(counts[-1])}")
                lines.append(f"{name}_count{_labels_text(labels)} {_number(cumulative)}")
        else:
            for (metric, labels), value in sorted(values.items()):
                if metric == name:
                    lines.append(f"{name}{_labels_text(labels)} {_number(value)}")
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMetrics:
    """Snapshots of every worker in one folder, so that any worker can answer a scrape for the whole server."""

    def __init__(self, metrics: Metrics, directory: str | Path) -> None:
        self.metrics = metrics
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own = self.directory / f"{os.getpid()}.json"
        # A file under our pid was left by an exited worker whose pid the kernel has reused: archive it.
        self.compact(also=[self._own] if self._own.exists() else [])

    def write(self, *, final: bool = False) -> None:
        snapshot = self.metrics.snapshot()
        if final:
            # An exited worker's gauges (its buffer depth) no longer describe anything.
            snapshot["values"] = [v for v in snapshot["values"] if METRICS.get(v[0], ("gauge",))[0] != "gauge"]
        tmp = self._own.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot))
        os.replace(tmp, self._own)

    def _read(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            # A snapshot being replaced or half-written by a killed worker is skipped this once.
            return {}

    def compact(self, also: list[Path] | None = None) -> None:
        """Fold the snapshots of exited workers into the archive file (under a lock: workers race here)."""
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            dead = [p for p in self.directory.glob("*.json") if p.stem.isdigit() and not _pid_alive(int(p.stem))]
            dead += also or []
            if not dead:
                return
            archive_path = self.directory / _ARCHIVE
            parts = [(self._read(archive_path), False)] + [(self._read(p), False) for p in dead]
            values, histograms = _merge(parts)
            archive = {
                "values": [[n, list(map(list, labels)), v] for (n, labels), v in values.items()],
                "histograms": [[n, list(map(list, labels)), c] for (n, labels), c in histograms.items()],
            }
            tmp = archive_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(archive))
            os.replace(tmp, archive_path)
            for path in dead:
                path.unlink(missing_ok=True)

    def merged(self) -> tuple[dict, dict]:
        parts: list[tuple[Any, bool]] = [(self.metrics.snapshot(), True)]
        # A shared lock, so that a compaction never shows a worker's counts both archived and on their own.
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            for path in self.directory.glob("*.json"):
                if path == self._own:
                    continue
                if path.name == _ARCHIVE:
                    parts.append((self._read(path), False))
                elif path.stem.isdigit():
                    parts.append((self._read(path), _pid_alive(int(path.stem))))
        return _merge(parts)
