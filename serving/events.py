"""Prediction events: buffered in memory and shipped to the console in batches on a background thread.

A prediction never waits for the console: `record` only appends to a buffer bounded in events and in bytes
(each event comes with an estimate of its encoded size). The buffer holds events while the console is away
(shipping retries with backoff); when it is full the oldest events are dropped. Posts are split to stay under
a maximum body size, and a post the console refuses (413 for too large, or another 4xx) is halved and sent
again until only the events it refuses one by one are left. Events the console takes the post of but refuses
one by one (its answer's `rejected` list: an impossible timestamp, an unknown version) are dropped too, as
`rejected_<field>`. Every event dropped is counted in `/metrics` with its reason, so that no loss is silent.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
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
# An event's fields besides its inputs and outputs (ids, timestamp, latency, an error message), and the
# encoded size of one output value: the terms of `event_size`.
EVENT_OVERHEAD_BYTES = 512
VALUE_BYTES = 24
# The JSON around the events of one post: `{"events":[` ... `],` and the shipping report `"server":…}`, which
# is kept under REPORT_MAX_BYTES (a host name, the pid and a few drop reasons).
_POST_ENVELOPE = b'{"events":['
REPORT_MAX_BYTES = 512
_POST_OVERHEAD = len(_POST_ENVELOPE) + 2 + REPORT_MAX_BYTES
FLUSH_INTERVAL_SECONDS = 1.0
# How long the shipper encodes events before it offers the worker's GIL to the request thread.
ENCODE_SLICE_SECONDS = 0.0005
POST_TIMEOUT_SECONDS = 5.0
BACKOFF_START_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
SHUTDOWN_FLUSH_SECONDS = 2.0
# A field name the console's per-event rejections may name, turned into a drop reason `rejected_<field>`.
_FIELD_NAME = re.compile(r"[a-z][a-z_]{0,31}")
# Statuses worth retrying: the console is busy, restarting or behind a proxy that lost it.
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}

# The request thread stores a tuple, not a dict: turning it into JSON happens on the shipper thread, off
# the prediction's path (but under the worker's GIL, so it must stay cheap: inputs go out as the columns
# the server holds, `{"name": [values...]}`, not rebuilt as one object per row).
_FIELDS = (
    "timestamp",
    "request_id",
    "event_id",
    "version_id",
    "inputs",
    "outputs",
    "probabilities",
    "latency_ms",
    "status",
    "error",
    "request_key",
    "shadow",
    "pinned",
)


def _encode(event: dict) -> bytes:
    # orjson: Python's encoder spent most of the shipper's time in float repr, holding the worker's GIL.
    return orjson.dumps(event, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def _post_body(encoded: list[bytes], report: dict[str, Any] | None = None) -> bytes:
    """The events, and the shipping report's fields beside them (the console keeps the latest per process)."""
    tail = b"," + orjson.dumps(report)[1:] if report else b"}"
    return _POST_ENVELOPE + b",".join(encoded) + b"]" + tail


def _chunks(items: list[tuple[tuple, int, bytes]], limit: int) -> list[list[tuple[tuple, int, bytes]]]:
    """Consecutive runs of encoded events whose post body stays within `limit` bytes (each event fits alone)."""
    chunks: list[list[tuple[tuple, int, bytes]]] = []
    size = limit
    for item in items:
        added = len(item[2]) + 1
        if size + added > limit:
            chunks.append([])
            size = _POST_OVERHEAD
        chunks[-1].append(item)
        size += added
    return chunks


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
        buffer_bytes: int,
        max_post_bytes: int,
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
        self._server = f"{socket.gethostname()[:180]}:{os.getpid()}"
        self._metrics = metrics
        # (event, estimated encoded size) pairs, oldest first; `_bytes` is the sum of the estimates.
        self._buffer: deque[tuple[tuple, int]] = deque()
        self._bytes = 0
        self._buffer_size = buffer_size
        self._buffer_bytes = buffer_bytes
        self._max_post_bytes = max_post_bytes
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Set by `close`. A backoff waits on it rather than on `_wake`, which every event sets once a batch is
        # buffered (as it always is while the console is away).
        self._stopped = threading.Event()
        self._deadline = 0.0
        self._timeout = POST_TIMEOUT_SECONDS
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="event-shipper", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request side (must stay cheap)

    def record(self, event: tuple, size: int) -> None:
        """Queue one event (a tuple in `_FIELDS` order) of about `size` encoded bytes; drops the oldest to make room.

        An event larger than the whole byte budget is dropped itself: keeping it would empty the buffer.
        """
        if size > self._buffer_bytes:
            self._drop("too_large_single_event", 1)
            return
        dropped = 0
        with self._lock:
            while self._buffer and (len(self._buffer) >= self._buffer_size or self._bytes + size > self._buffer_bytes):
                self._bytes -= self._buffer.popleft()[1]
                dropped += 1
            self._buffer.append((event, size))
            self._bytes += size
            depth = len(self._buffer)
        if dropped:
            self._drop("buffer_full", dropped)
        if depth >= self._batch_size:
            self._wake.set()

    def depth(self) -> int:
        return len(self._buffer)

    def buffered_bytes(self) -> int:
        return self._bytes

    def _drop(self, reason: str, count: int) -> None:
        self._metrics.inc("model_server_events_dropped_total", (("reason", reason),), count)

    # ------------------------------------------------------------------ shipper thread

    def _event_json(self, event: tuple) -> dict:
        data = dict(zip(_FIELDS, event, strict=True))
        data["timestamp"] = datetime.fromtimestamp(data["timestamp"], UTC).isoformat()
        data["deployment_id"] = self._deployment_id
        return data

    def _take(self) -> list[tuple[tuple, int]]:
        """The oldest events, up to a batch and (by their estimates) about one post's worth of bytes."""
        taken: list[tuple[tuple, int]] = []
        size = 0
        with self._lock:
            while self._buffer and len(taken) < self._batch_size:
                if taken and size + self._buffer[0][1] > self._max_post_bytes:
                    break
                item = self._buffer.popleft()
                self._bytes -= item[1]
                size += item[1]
                taken.append(item)
        return taken

    def _put_back(self, batch: list[tuple[tuple, int]]) -> None:
        # The failed events are older than anything queued since, so they go back in front; what does not fit
        # (in count or bytes) is the oldest of all and is dropped.
        with self._lock:
            room = max(0, self._buffer_size - len(self._buffer))
            budget = self._buffer_bytes - self._bytes
            keep: list[tuple[tuple, int]] = []
            for item in reversed(batch):
                if len(keep) >= room or item[1] > budget:
                    break
                keep.append(item)
                budget -= item[1]
            self._buffer.extendleft(keep)
            self._bytes += sum(item[1] for item in keep)
        if len(keep) < len(batch):
            self._drop("buffer_full", len(batch) - len(keep))

    def _report(self) -> dict[str, Any]:
        """This process's shipping report: the events it dropped so far by reason, and those still buffered."""
        dropped = self._metrics.counter_values("model_server_events_dropped_total", "reason")
        return {
            "server": self._server,
            "dropped": {reason: int(count) for reason, count in sorted(dropped.items())[:20]},
            "buffered": len(self._buffer),
        }

    def _connected(self) -> bool:
        """Whether a connection to the console is open, opening one if needed (with a warning when it cannot)."""
        if self._connection is not None and self._connection.sock is not None:
            return True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._connection = cls(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.connect()
        except OSError as exc:
            self._connection.close()
            self._connection = None
            logger.warning("shipping prediction events failed: %s", exc)
            return False
        return True

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST once, reusing the connection; returns the HTTP status (0 for a network failure) and the answer."""
        for attempt in range(2):
            if not self._connected():
                break
            try:
                self._connection.request("POST", self._path, body=body, headers=self._headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._connection.close()
                self._connection = None
                # A kept-alive connection the console closed in the meantime is reset at once: the post is sent
                # again on a new one. Any other failure (a console that does not answer within the timeout) is
                # real: sending again would wait as long once more and post the same events twice.
                if attempt == 1 or not isinstance(exc, ConnectionResetError | BrokenPipeError):
                    logger.warning("shipping prediction events failed: %s", exc)
                    break
        return 0, b""

    def _count_rejected(self, answer: bytes) -> int:
        """Count the events the console stored none of although it took the post (its `rejected` list, one entry
        per event, naming the field): each is a drop, by `rejected_<field>`. Returns how many."""
        try:
            rejected = orjson.loads(answer).get("rejected") if answer else None
        except (orjson.JSONDecodeError, AttributeError):
            return 0
        if not isinstance(rejected, list) or not rejected:
            return 0
        reasons: dict[str, int] = {}
        for item in rejected:
            field = item.get("field") if isinstance(item, dict) else None
            # The console names a field of the event; anything else is one reason, so labels stay few.
            reason = f"rejected_{field}" if isinstance(field, str) and _FIELD_NAME.fullmatch(field) else "rejected"
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            self._drop(reason, count)
        first = rejected[0] if isinstance(rejected[0], dict) else {}
        logger.error(
            "the console refused %d prediction event(s), e.g. request %s: %s",
            len(rejected),
            str(first.get("request_id"))[:64],
            str(first.get("error"))[:200],
        )
        return len(rejected)

    def _encoded(self, batch: list[tuple[tuple, int]]) -> list[tuple[tuple, int, bytes]]:
        """Each event with its JSON; an event that cannot be encoded, or that no post could carry, is dropped."""
        limit = self._max_post_bytes - _POST_OVERHEAD
        items = []
        offer_at = time.perf_counter() + ENCODE_SLICE_SECONDS
        for event, size in batch:
            # One encoder call per event, not one for the batch: a C call holds the worker's GIL until it
            # returns, and encoding 500 events at once would stall the request thread for that long. After each
            # slice of encoding the GIL is offered to the request thread: otherwise it waits for the switch
            # interval (5 ms) whenever it needs the GIL while a batch is being encoded. Offering it after every
            # event instead cost more than the rest of the event's shipping (0.09 ms a 1-row event: a sleep and
            # two thread switches each time).
            try:
                data = _encode(self._event_json(event))
            except (TypeError, ValueError) as exc:
                logger.error("a prediction event could not be encoded, dropping it: %s", exc)
                self._drop("unencodable", 1)
                continue
            finally:
                if time.perf_counter() >= offer_at:
                    time.sleep(0)
                    offer_at = time.perf_counter() + ENCODE_SLICE_SECONDS
            if len(data) > limit:
                logger.error("a prediction event of %d bytes exceeds the post limit %d; dropping it", len(data), limit)
                self._drop("too_large_single_event", 1)
                continue
            items.append((event, size, data))
        return items

    def _ship(self, batch: list[tuple[tuple, int]]) -> list[tuple[tuple, int]]:
        """Send a batch in posts within the size limit; returns the events to retry later (the console is away).

        A post the console refuses is split in halves, each sent again: what the console takes is stored, and
        only an event it refuses on its own is dropped (as `too_large_single_event` for a 413, else `rejected`).
        """
        # Connecting first: with the console away, encoding a batch only to fail to send it cost the worker a
        # core at every attempt.
        if not self._connected():
            return batch
        pending = deque(_chunks(self._encoded(batch), self._max_post_bytes))
        while pending:
            chunk = pending.popleft()
            status, answer = self._post(_post_body([data for _, _, data in chunk], self._report()))
            if 200 <= status < 300:
                stored = len(chunk) - self._count_rejected(answer)
                self._metrics.inc("model_server_events_shipped_total", (), max(0, stored))
                continue
            if not status or status in _RETRY_STATUSES:
                return [(event, size) for part in (chunk, *pending) for event, size, _ in part]
            if len(chunk) > 1:
                half = len(chunk) // 2
                pending.extendleft([chunk[half:], chunk[:half]])
                continue
            reason = "too_large_single_event" if status == 413 else "rejected"
            logger.error("the console refused a prediction event with HTTP %d; dropping it", status)
            self._drop(reason, 1)
        return []

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopped.is_set():
            if backoff:
                self._stopped.wait(backoff)
            else:
                self._wake.wait(self._flush_interval)
            self._wake.clear()
            while not self._stopped.is_set():
                batch = self._take()
                if not batch:
                    backoff = 0.0
                    break
                retry = self._ship(batch)
                if retry:
                    self._put_back(retry)
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
            retry = self._ship(batch)
            if retry:
                self._put_back(retry)
                break
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
            self._bytes = 0
        if left:
            self._drop("shutdown", left)
            logger.warning("dropped %d prediction events at shutdown (console unreachable)", left)

    def close(self, timeout: float = SHUTDOWN_FLUSH_SECONDS) -> None:
        """Stop the thread after it ships what it can within `timeout`; the rest is counted as dropped."""
        self._deadline = time.monotonic() + timeout
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout + 0.5)


def event_size(*, input_bytes: int, outputs: list | None, probabilities: list | None) -> int:
    """An estimate of an event's encoded size, made without encoding it (that happens off the request path).

    The inputs are the request body's values (`input_bytes`, the body's length, is close to their JSON); each
    output and probability is a number or a label of a few dozen bytes at most.
    """
    size = EVENT_OVERHEAD_BYTES + input_bytes
    if outputs:
        size += VALUE_BYTES * len(outputs) * (1 + (len(probabilities[0]) if probabilities else 0))
    return size


def event(
    *,
    request_id: str,
    event_id: str,
    version_id: Any,
    inputs: Mapping[str, list] | None,
    outputs: list | None,
    probabilities: list | None,
    latency_ms: float,
    status: int,
    error: str | None,
    request_key: str | None,
    shadow: bool,
    pinned: bool,
    timestamp: float,
) -> tuple:
    """An event tuple in `_FIELDS` order (keyword arguments so call sites cannot mix the fields up).

    `request_id` is the caller's `X-Request-Id` (or one the server made up), answered back and joined to
    feedback labels; callers choose it, so it may repeat. `event_id` is the server's own (a fresh UUID per
    request, shared by its shadow copy): the console de-duplicates re-sent events on it. `pinned` marks a
    request the caller sent to one version by name, which canary analysis must not count.
    """
    return (
        timestamp,
        request_id,
        event_id,
        version_id,
        inputs,
        outputs,
        probabilities,
        latency_ms,
        status,
        error,
        request_key,
        shadow,
        pinned,
    )
