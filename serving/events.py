"""Prediction events: buffered in memory and shipped to the console in batches on a background thread.

A prediction never waits for the console: `record` only appends to a bounded buffer. The buffer holds
events while the console is away (shipping retries with backoff); when it is full the oldest events are
dropped and counted, so that memory stays bounded and `/metrics` shows the loss.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from serving.metrics import Metrics

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
FLUSH_INTERVAL_SECONDS = 1.0
POST_TIMEOUT_SECONDS = 5.0
BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
SHUTDOWN_FLUSH_SECONDS = 2.0
# Statuses worth retrying: the console is busy, restarting or behind a proxy that lost it.
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}

# The request thread stores a tuple, not a dict: turning it into JSON happens on the shipper thread, off
# the prediction's path (but under the worker's GIL, so it must stay cheap: inputs go out as the columns
# the server holds, `{"name": [values...]}`, not rebuilt as one object per row).
_FIELDS = (
    "timestamp",
    "request_id",
    "version_id",
    "inputs",
    "outputs",
    "probabilities",
    "latency_ms",
    "status",
    "error",
    "request_key",
    "shadow",
)


def _encode(event: dict) -> bytes:
    # orjson: Python's encoder spent most of the shipper's time in float repr, holding the worker's GIL.
    return orjson.dumps(event, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


class EventShipper:
    """Buffers events and POSTs them as `{"events": [...]}` with a bearer token to the console's ingest URL."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        deployment_id: str | int,
        metrics: Metrics,
        buffer_size: int,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._deployment_id = deployment_id
        self._metrics = metrics
        self._buffer: deque[tuple] = deque()
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._deadline = 0.0
        self._timeout = POST_TIMEOUT_SECONDS
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="event-shipper", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request side (must stay cheap)

    def record(self, event: tuple) -> None:
        """Queue one event (a tuple in `_FIELDS` order); drops the oldest when the buffer is full."""
        with self._lock:
            if len(self._buffer) >= self._buffer_size:
                self._buffer.popleft()
                self._metrics.inc("model_server_events_dropped_total", (("reason", "buffer_full"),))
            self._buffer.append(event)
            depth = len(self._buffer)
        if depth >= self._batch_size:
            self._wake.set()

    def depth(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------------ shipper thread

    def _event_json(self, event: tuple) -> dict:
        data = dict(zip(_FIELDS, event, strict=True))
        data["timestamp"] = datetime.fromtimestamp(data["timestamp"], UTC).isoformat()
        data["deployment_id"] = self._deployment_id
        return data

    def _take(self) -> list[tuple]:
        with self._lock:
            count = min(self._batch_size, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def _put_back(self, batch: list[tuple]) -> None:
        # The failed batch is older than anything queued since, so it goes back in front; what does not fit
        # is the oldest of all and is dropped.
        with self._lock:
            room = max(0, self._buffer_size - len(self._buffer))
            keep = batch[len(batch) - room :] if room < len(batch) else batch
            dropped = len(batch) - len(keep)
            self._buffer.extendleft(reversed(keep))
        if dropped:
            self._metrics.inc("model_server_events_dropped_total", (("reason", "buffer_full"),), dropped)

    def _post(self, body: bytes) -> int:
        """POST once, reusing the connection; returns the HTTP status (0 for a network failure)."""
        for attempt in range(2):
            if self._connection is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._connection = cls(self._host, self._port, timeout=self._timeout)
            try:
                self._connection.request("POST", self._path, body=body, headers=self._headers)
                response = self._connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException) as exc:
                self._connection.close()
                self._connection = None
                # A kept-alive connection the console closed fails once; a second failure is real.
                if attempt == 1:
                    logger.warning("shipping prediction events failed: %s", exc)
        return 0

    def _ship(self, batch: list[tuple]) -> bool:
        """Send one batch; True when it is done with (accepted, or refused for good and counted as dropped)."""
        try:
            # One encoder call per event, not one for the batch: a C call holds the worker's GIL until it
            # returns, and encoding 500 events at once would stall the request thread for that long. Between
            # events the GIL is offered to the request thread: otherwise it waits for the switch interval
            # (5 ms) each time it needs the GIL while a batch is being encoded.
            encoded = []
            for event in batch:
                encoded.append(_encode(self._event_json(event)))
                time.sleep(0)
            body = b'{"events":[' + b",".join(encoded) + b"]}"
        except (TypeError, ValueError) as exc:
            logger.error("prediction events could not be encoded, dropping %d: %s", len(batch), exc)
            self._metrics.inc("model_server_events_dropped_total", (("reason", "unencodable"),), len(batch))
            return True
        status = self._post(body)
        if 200 <= status < 300:
            self._metrics.inc("model_server_events_shipped_total", (), len(batch))
            return True
        if status and status not in _RETRY_STATUSES:
            # A 4xx other than "busy" will not change by sending the same batch again.
            logger.error("the console refused %d prediction events with HTTP %d; dropping them", len(batch), status)
            self._metrics.inc("model_server_events_dropped_total", (("reason", "rejected"),), len(batch))
            return True
        return False

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            self._wake.wait(backoff or self._flush_interval)
            self._wake.clear()
            while not self._stopping:
                batch = self._take()
                if not batch:
                    backoff = 0.0
                    break
                if not self._ship(batch):
                    self._put_back(batch)
                    backoff = min(BACKOFF_MAX_SECONDS, max(BACKOFF_START_SECONDS, backoff * 2))
                    break
                backoff = 0.0
                if len(self._buffer) < self._batch_size:
                    # Less than a batch left: wait for the next tick rather than sending many small posts.
                    break
        self._final_flush()

    def _final_flush(self) -> None:
        while (remaining := self._deadline - time.monotonic()) > 0:
            batch = self._take()
            if not batch:
                break
            if self._connection is not None and self._connection.sock is not None:
                self._connection.sock.settimeout(remaining)
            self._timeout = remaining
            if not self._ship(batch):
                self._put_back(batch)
                break
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
        if left:
            self._metrics.inc("model_server_events_dropped_total", (("reason", "shutdown"),), left)
            logger.warning("dropped %d prediction events at shutdown (console unreachable)", left)

    def close(self, timeout: float = SHUTDOWN_FLUSH_SECONDS) -> None:
        """Stop the thread after it ships what it can within `timeout`; the rest is counted as dropped."""
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout + 0.5)


def event(
    *,
    request_id: str,
    version_id: Any,
    inputs: Mapping[str, list] | None,
    outputs: list | None,
    probabilities: list | None,
    latency_ms: float,
    status: int,
    error: str | None,
    request_key: str | None,
    shadow: bool,
    timestamp: float,
) -> tuple:
    """An event tuple in `_FIELDS` order (keyword arguments so call sites cannot mix the fields up)."""
    return (
        timestamp,
        request_id,
        version_id,
        inputs,
        outputs,
        probabilities,
        latency_ms,
        status,
        error,
        request_key,
        shadow,
    )
