"""The model server's WSGI application: Open Inference Protocol (KServe V2), MLflow `/invocations`, metrics.

It is a plain WSGI callable with a hand-written router, because per-request framework overhead would be a
large share of a sub-millisecond prediction. One `ModelServer` loads every version of a deployment spec
before it answers anything, picks a version per request (traffic split), and does the work that must not
delay the answer (prediction event, shadow copy) after the response is sent, from the WSGI `close()` hook.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving import binary
from serving.events import EventShipper, event, event_size
from serving.loader import load_predictor
from serving.metrics import SNAPSHOT_INTERVAL_SECONDS, Metrics, SharedMetrics, render
from serving.signature import InputError, payload_to_columns
from serving.spec import ModelRef, Spec, load_spec

logger = logging.getLogger(__name__)

SHADOW_QUEUE_SIZE = 1000
# Archive the metric snapshots of exited workers this often (in snapshot ticks).
COMPACT_EVERY_TICKS = 60
SERVER_NAME = "mlops-console-model-server"
JSON = "application/json"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS_LINES = {status: f"{status} {reason}" for status, reason in _REASONS.items()}
_V2_INPUT_TYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL"}
# The deepest JSON nesting a request body may have. Every accepted payload is at most about 6 levels deep; the
# limit stays far below the depth at which a parser or a recursive walk over the payload would fail.
MAX_JSON_DEPTH = 64
_JSON_DELETE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_QUOTE = ord('"')
# +1 for an opening bracket, -1 for a closing one, 0 for a quote.
_JSON_STEP = np.zeros(256, dtype=np.int8)
_JSON_STEP[list(b"[{")] = 1
_JSON_STEP[list(b"]}")] = -1


def _encode_json(body: Any) -> bytes:
    # orjson: Python's encoder spent most of a batch response in float repr. It writes NaN as null, which
    # keeps every response valid JSON (Python's writes the non-standard NaN token).
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # Python's parser also takes NaN and Infinity, which clients built on Python's json (MLflow's among
        # them) send for missing values; and its error message is the one we have always given.
        return json.loads(body)


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `body` nests arrays and objects more than `limit` levels deep, without parsing it.

    A body with no more brackets than the limit cannot be too deep (most requests stop there). Otherwise the
    depth is counted with array operations over the body's quotes and brackets (escaped backslashes and quotes
    removed first): an odd number of quotes before a bracket puts it inside a string. A malformed body is
    measured all the same (its parser would recurse as deep) and is otherwise left for the parser to refuse.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = np.frombuffer(body.translate(None, _JSON_DELETE), dtype=np.uint8)
    # Narrow types keep the temporary arrays small on a large body: quote counts wrap at 256, parity intact.
    outside = (np.cumsum(marks == _QUOTE, dtype=np.uint8) & 1) == 0
    steps = _JSON_STEP[marks] * outside
    return int(np.cumsum(steps, dtype=np.int32).max()) > limit


StartResponse = Callable[..., Any]


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class TrafficSplit:
    """Integer weights (summing to 100) -> a version index per request.

    With a key, the bucket is the first 8 bytes of sha256(key) mod 100, so the same key lands on the same
    version in every process and across restarts, for as long as the weights stay the same; buckets are
    laid out in spec order, so raising a canary's weight only moves keys towards it.
    """

    def __init__(self, weights: Iterable[int]) -> None:
        self._bounds: list[int] = []
        total = 0
        for weight in weights:
            total += weight
            self._bounds.append(total)

    @staticmethod
    def bucket(key: str) -> int:
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100

    def pick(self, key: str | None) -> int:
        bucket = self.bucket(key) if key else random.randrange(100)
        return bisect.bisect_right(self._bounds, bucket)


def new_request_id() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) gives, for about half its cost.

    Every answer without a caller's id needs one, and uuid.UUID validates and converts more than that needs.
    """
    digits = os.urandom(16).hex()
    # Version nibble 4; variant bits 10 (the first digit of the fourth group is 8, 9, a or b).
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def _v2_datatype(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


class LoadedVersion:
    """A model version with what the request path needs precomputed."""

    def __init__(self, ref: ModelRef, predictor: Any, *, role: str) -> None:
        self.ref = ref
        self.role = role
        self.id = str(ref.version_id)
        self.predictor = predictor
        self.signature: Mapping = predictor.signature
        self.names = [spec["name"] for spec in self.signature["inputs"]]
        classes = predictor.classes if predictor.task == "classification" else None
        self.classes = np.asarray(classes) if classes else None
        self.class_list = self.classes.tolist() if self.classes is not None else None
        self.output_datatype = _v2_datatype(self.classes) if self.classes is not None else "FP64"
        self.output_names = ["predict", "predict_proba"] if self.classes is not None else ["predict"]
        # Metric labels of a successful answer, per protocol, and of its duration (built once, not per request).
        self.ok_labels = {
            protocol: (("version", self.id), ("protocol", protocol), ("status", "200")) for protocol in ("v2", "mlflow")
        }
        self.duration_labels = (("version", self.id),)
        self._warm_up()

    def _warm_up(self) -> None:
        # The first call of a model pays for lazy imports and allocations (tens of ms for scikit-learn):
        # pay it now, before the worker accepts traffic, with the bundle's own input example.
        example = getattr(self.predictor, "manifest", {}).get("input_example") or []
        if not example:
            return
        try:
            self.predict({name: [row.get(name) for row in example[:1]] for name in self.names})
        except Exception as exc:  # a model that fails on its own example still serves; requests will tell
            logger.warning("version %s failed on its input example: %s", self.id, exc)

    def predict(self, columns: Mapping[str, list]) -> tuple[list, list | None]:
        """Labels (or values) and, for classifiers, class probabilities: one vectorised call either way."""
        if self.classes is not None:
            # One predict_proba gives both; the labels are its argmax, as the loader's own predict does.
            proba = np.asarray(self.predictor.predict_proba(columns))
            return self.classes[np.argmax(proba, axis=1)].tolist(), proba.tolist()
        return np.asarray(self.predictor.predict(columns)).reshape(-1).tolist(), None

    def metadata(self) -> dict:
        return {
            "version_id": self.ref.version_id,
            "label": self.ref.label,
            "role": self.role,
            "weight": self.ref.weight,
            "sha256": self.ref.sha256,
            "flavor": self.predictor.flavor,
            "task": self.predictor.task,
            "classes": self.classes.tolist() if self.classes is not None else None,
        }

    def v2_inputs(self) -> list[dict]:
        return [
            {"name": spec["name"], "datatype": _V2_INPUT_TYPES.get(spec["type"], "BYTES"), "shape": [-1]}
            for spec in self.signature["inputs"]
        ]

    def v2_outputs(self) -> list[dict]:
        outputs = [{"name": "predict", "datatype": self.output_datatype, "shape": [-1]}]
        if self.classes is not None:
            outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(self.classes)]})
        return outputs


def load_models(
    spec: Spec, loader: Callable[..., Any] = load_predictor
) -> tuple[list[LoadedVersion], LoadedVersion | None]:
    """Every live version and the shadow, each checked against its sha256 as it is loaded."""

    def load(ref: ModelRef, role: str) -> LoadedVersion:
        predictor = loader(ref.artifact_path, expected_sha256=ref.sha256, trust_pickle=spec.trust_pickle)
        logger.info("loaded %s version %s (%s) from %s", role, ref.version_id, predictor.flavor, ref.artifact_path)
        return LoadedVersion(ref, predictor, role=role)

    versions = [load(ref, "live") for ref in spec.versions]
    return versions, (load(spec.shadow, "shadow") if spec.shadow else None)


class _Body:
    """A WSGI response body whose `close()` (called once the response is written) runs deferred work."""

    __slots__ = ("_chunk", "_after")

    def __init__(self, chunk: bytes, after: Callable[[], None] | None) -> None:
        self._chunk = chunk
        self._after = after

    def __iter__(self) -> Iterator[bytes]:
        yield self._chunk

    def close(self) -> None:
        if self._after is not None:
            try:
                self._after()
            except Exception:  # deferred work must never turn a sent response into a server error
                logger.exception("post-response work failed")


class ModelServer:
    """The WSGI application for one deployment spec. Loads every model in the constructor."""

    def __init__(
        self,
        spec: Spec,
        *,
        metrics_dir: str | Path | None = None,
        loader: Callable[..., Any] = load_predictor,
    ) -> None:
        self.spec = spec
        self.metrics = Metrics()
        self.ready = False
        self.versions, self.shadow = load_models(spec, loader)
        self.by_id = {v.id: v for v in self.versions}
        self.split = TrafficSplit(v.ref.weight for v in self.versions)
        # The V2 metadata describes the version most traffic goes to.
        self.primary = max(self.versions, key=lambda v: v.ref.weight)
        self._sticky_env = "HTTP_" + spec.sticky_header.upper().replace("-", "_")
        self._model_prefix = f"/v2/models/{spec.name}"
        self.shipper: EventShipper | None = None
        if spec.console_url:
            self.shipper = EventShipper(
                url=spec.console_url,
                token=spec.token,
                deployment_id=spec.deployment_id,
                metrics=self.metrics,
                buffer_size=spec.event_buffer_size,
                buffer_bytes=spec.event_buffer_bytes,
                max_post_bytes=spec.event_max_post_bytes,
            )
        self._shadow_queue: queue.Queue | None = None
        if self.shadow is not None:
            self._shadow_queue = queue.Queue(SHADOW_QUEUE_SIZE)
            threading.Thread(target=self._shadow_loop, name="shadow", daemon=True).start()
        self.shared: SharedMetrics | None = None
        self._stop = threading.Event()
        if metrics_dir is not None:
            self.shared = SharedMetrics(self.metrics, metrics_dir)
            threading.Thread(target=self._snapshot_loop, name="metrics-snapshot", daemon=True).start()
        self.ready = True

    # ------------------------------------------------------------------ WSGI entry point

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        prefix = self._model_prefix
        if path == "/invocations":
            return self._post_only(method, start_response) or self._predict(environ, start_response, "mlflow")
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if rest == "/infer":
                return self._post_only(method, start_response) or self._predict(environ, start_response, "v2")
            if rest.startswith("/versions/"):
                version_id, _, action = rest[len("/versions/") :].partition("/")
                version = self.by_id.get(version_id)
                if version is None:
                    return self._error(start_response, 404, f"model version {version_id!r} is not served here")
                if action == "infer":
                    return self._post_only(method, start_response) or self._predict(
                        environ, start_response, "v2", pinned=version
                    )
                if action == "ready":
                    return self._get(method, start_response, self._model_ready)
                if action == "":
                    return self._get(method, start_response, lambda: (200, self._model_metadata(version)))
            elif rest == "/ready":
                return self._get(method, start_response, self._model_ready)
            elif rest == "":
                return self._get(method, start_response, lambda: (200, self._model_metadata(self.primary)))
        elif path.startswith("/v2/models/"):
            return self._error(start_response, 404, "unknown model; this server serves " + repr(self.spec.name))
        if path == "/metrics":
            return self._get(method, start_response, None) or self._metrics_response(start_response)
        route = _ROUTES.get(path)
        if route is None:
            return self._error(start_response, 404, f"no route for {path}")
        return self._get(method, start_response, lambda: route(self))

    def _post_only(self, method: str, start_response: StartResponse) -> Iterable[bytes] | None:
        if method == "POST":
            return None
        return self._error(start_response, 405, "use POST")

    def _get(
        self, method: str, start_response: StartResponse, handler: Callable[[], tuple[int, Any]] | None
    ) -> Iterable[bytes] | None:
        if method not in ("GET", "HEAD"):
            return self._error(start_response, 405, "use GET")
        if handler is None:
            return None
        status, body = handler()
        return self._json(start_response, status, body)

    # ------------------------------------------------------------------ responses

    def _json(
        self,
        start_response: StartResponse,
        status: int,
        body: Any,
        headers: list[tuple[str, str]] | None = None,
        after: Callable[[], None] | None = None,
    ) -> Iterable[bytes]:
        return self._send(start_response, status, _encode_json(body), JSON, headers, after)

    def _send(
        self,
        start_response: StartResponse,
        status: int,
        data: bytes,
        content_type: str,
        headers: list[tuple[str, str]] | None = None,
        after: Callable[[], None] | None = None,
    ) -> Iterable[bytes]:
        response_headers = [("Content-Type", content_type), ("Content-Length", str(len(data)))]
        if headers:
            response_headers.extend(headers)
        start_response(_STATUS_LINES.get(status) or f"{status} ", response_headers)
        return _Body(data, after)

    def _error(
        self, start_response: StartResponse, status: int, message: str, field: str | None = None
    ) -> Iterable[bytes]:
        return self._json(start_response, status, {"error": message, "field": field})

    # ------------------------------------------------------------------ health and metadata

    def _live(self) -> tuple[int, Any]:
        return 200, {"live": True}

    def _ready(self) -> tuple[int, Any]:
        return (200 if self.ready else 503), {"ready": self.ready}

    def _model_ready(self) -> tuple[int, Any]:
        return (200 if self.ready else 503), {"name": self.spec.name, "ready": self.ready}

    def _server_metadata(self) -> tuple[int, Any]:
        return 200, {"name": SERVER_NAME, "version": "1", "extensions": ["binary_tensor_data"]}

    def _model_metadata(self, version: LoadedVersion) -> dict:
        return {
            "name": self.spec.name,
            "versions": [v.id for v in self.versions],
            "platform": f"mlops-console/{version.predictor.flavor}",
            "inputs": version.v2_inputs(),
            "outputs": version.v2_outputs(),
            "parameters": {
                "deployment_id": self.spec.deployment_id,
                "model_version": version.id,
                "traffic": [v.metadata() for v in self.versions],
                "shadow": self.shadow.metadata() if self.shadow else None,
                "sticky_key": {"header": self.spec.sticky_header, "field": self.spec.sticky_field},
                "max_rows": self.spec.max_rows,
                "signature": version.signature,
            },
        }

    def _metrics_response(self, start_response: StartResponse) -> Iterable[bytes]:
        self._buffer_gauges()
        if self.shared is not None:
            values, histograms = self.shared.merged()
        else:
            snapshot = self.metrics.snapshot()
            values = {(n, tuple(map(tuple, labels))): v for n, labels, v in snapshot["values"]}
            histograms = {(n, tuple(map(tuple, labels))): c for n, labels, c in snapshot["histograms"]}
        data = render(values, histograms, self._info_lines()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", str(len(data)))]
        )
        return [data]

    def _buffer_gauges(self) -> None:
        if self.shipper is not None:
            self.metrics.set("model_server_event_buffer_depth", (), self.shipper.depth())
            self.metrics.set("model_server_event_buffer_bytes", (), self.shipper.buffered_bytes())

    def _info_lines(self) -> list[str]:
        """Gauges describing what this server runs (the same in every worker, so not added up)."""
        lines = [
            "# HELP model_server_ready 1 once every version is loaded.",
            "# TYPE model_server_ready gauge",
            f"model_server_ready {int(self.ready)}",
            "# HELP model_server_traffic_weight Percent of traffic routed to each live version.",
            "# TYPE model_server_traffic_weight gauge",
        ]
        lines += [f'model_server_traffic_weight{{version="{v.id}"}} {v.ref.weight}' for v in self.versions]
        lines += [
            "# HELP model_server_version_info The versions loaded, with their role, flavor and artifact hash.",
            "# TYPE model_server_version_info gauge",
        ]
        for v in [*self.versions, *([self.shadow] if self.shadow else [])]:
            labels = f'version="{v.id}",role="{v.role}",flavor="{v.predictor.flavor}",sha256="{v.ref.sha256}"'
            lines.append(f"model_server_version_info{{{labels}}} 1")
        return lines

    # ------------------------------------------------------------------ prediction

    def _read_body(self, environ: dict) -> bytes:
        limit = self.spec.max_body_bytes
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        if length:
            try:
                size = int(length)
            except ValueError:
                raise HttpError(400, "Content-Length is not a number", "Content-Length") from None
            # Refuse before reading: a client must not make us buffer more than the limit.
            if size > limit:
                raise HttpError(413, f"the body has {size} bytes, more than the limit of {limit}", "body")
            return stream.read(size)
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
            raise HttpError(411, "send a Content-Length header (or a chunked body)", "Content-Length")
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise HttpError(413, f"the body is larger than the limit of {limit} bytes", "body")
        return data

    def _decode_body(self, body: bytes, header_length: str | None, protocol: str) -> tuple[dict, int]:
        """The request's JSON object, binary inputs decoded into it, and the inputs' estimated size as JSON.

        Every failure here is the body's, not a model's: it is raised before a version is chosen.
        """
        data = None
        if header_length is not None:
            if protocol != "v2":
                raise HttpError(400, "binary tensor data is for the V2 infer endpoints", binary.HEADER)
            try:
                body, data = binary.split_body(body, header_length)
            except InputError as exc:
                raise HttpError(400, exc.message, exc.field) from None
        # Checked before parsing: a parser or a walk over the payload would recurse as deep as the body nests.
        if json_too_deep(body):
            raise HttpError(400, f"the body nests more than {MAX_JSON_DEPTH} levels deep", "body")
        try:
            payload = _decode_json(body)
        except ValueError as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}", "body") from None
        if not isinstance(payload, dict):
            raise HttpError(400, "the body must be a JSON object", "body")
        if protocol != "v2":
            return payload, len(body)
        try:
            # Binary values take more room as JSON in an event than in the body: the estimate, not the body's size,
            # is what the event buffer's byte bound must count.
            return payload, len(body) + binary.decode_inputs(payload, data)
        except InputError as exc:
            raise HttpError(400, exc.message, exc.field) from None

    def _request_key(self, environ: dict, payload: Mapping) -> str | None:
        key = environ.get(self._sticky_env)
        if key:
            return key
        field = self.spec.sticky_field
        value = payload.get(field)
        if value is None and isinstance(payload.get("parameters"), Mapping):
            # V2 requests carry extra values in "parameters".
            value = payload["parameters"].get(field)
        return None if value is None or value == "" else str(value)

    def _predict(
        self, environ: dict, start_response: StartResponse, protocol: str, pinned: LoadedVersion | None = None
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        timestamp = time.time()
        request_id = environ.get("HTTP_X_REQUEST_ID") or ""
        # No version until the body is a JSON object (with its binary inputs, if any, decoded): a body that is not
        # one says nothing of any model, so its failure is counted (and its event shipped) without a version, out
        # of every version's analysis.
        version: LoadedVersion | None = None
        columns: Mapping[str, list] | None = None
        key: str | None = None
        body_size = 0
        try:
            body = self._read_body(environ)
            body_size = len(body)
            payload, body_size = self._decode_body(body, environ.get(binary.HEADER_ENVIRON), protocol)
            if protocol == "v2" and not request_id and isinstance(payload.get("id"), str):
                request_id = payload["id"]
            key = self._request_key(environ, payload)
            version = pinned or self.versions[self.split.pick(key)]
            try:
                wanted = binary.wanted_outputs(payload, version.output_names) if protocol == "v2" else {}
                columns = payload_to_columns(payload, columns=version.names)
                rows = max(map(len, columns.values()), default=0)
                if rows == 0:
                    raise InputError("rows", "the input has no rows")
                if rows > self.spec.max_rows:
                    raise InputError("rows", f"{rows} rows exceed the limit of {self.spec.max_rows}")
                predictions, probabilities = version.predict(columns)
            except InputError as exc:
                raise HttpError(400, getattr(exc, "message", str(exc)), getattr(exc, "field", None)) from None
            except Exception as exc:  # a model failing on some input must not take the server down
                logger.exception("version %s failed to predict", version.id)
                raise HttpError(500, f"the model failed to predict: {exc}", None) from None
        except HttpError as error:
            request_id = request_id or new_request_id()
            return self._answer_error(
                start_response,
                error,
                protocol,
                version,
                request_id,
                columns,
                key,
                started,
                body_size,
                pinned is not None,
            )

        request_id = request_id or new_request_id()
        chunks: list[bytes] = []
        if protocol == "v2":
            tensors = [("predict", version.output_datatype, [rows], predictions)]
            if probabilities is not None:
                tensors.append(("predict_proba", "FP64", [rows, len(version.classes)], probabilities))
            outputs = []
            for name, datatype, shape, values in tensors:
                if name not in wanted:
                    continue
                output: dict = {"name": name, "datatype": datatype, "shape": shape}
                if wanted[name]:
                    chunk = binary.encode_output(datatype, values)
                    output["parameters"] = {"binary_data_size": len(chunk)}
                    chunks.append(chunk)
                else:
                    # JSON tensor data is flat, in row-major order.
                    output["data"] = values if len(shape) == 1 else [v for row in values for v in row]
                outputs.append(output)
            response: dict = {
                "model_name": self.spec.name,
                "model_version": version.id,
                "id": request_id,
                "outputs": outputs,
            }
            if probabilities is not None:
                response["parameters"] = {"classes": version.class_list}
        else:
            response = {"predictions": predictions, "model_version": version.id, "request_id": request_id}
            if probabilities is not None:
                response["probabilities"] = probabilities
                response["classes"] = version.class_list
        latency = time.perf_counter() - started
        headers = [("X-Model-Version", version.id), ("X-Request-Id", request_id)]

        def after() -> None:
            metrics = self.metrics
            metrics.inc("model_server_requests_total", version.ok_labels[protocol])
            metrics.observe("model_server_request_duration_seconds", version.duration_labels, latency)
            metrics.observe("model_server_batch_rows", (), rows)
            event_id = new_request_id()
            if self.shipper is not None:
                self.shipper.record(
                    event(
                        request_id=request_id,
                        event_id=event_id,
                        version_id=version.ref.version_id,
                        inputs=columns,
                        outputs=predictions,
                        probabilities=probabilities,
                        latency_ms=round(latency * 1000, 3),
                        status=200,
                        error=None,
                        request_key=key,
                        shadow=False,
                        pinned=pinned is not None,
                        timestamp=timestamp,
                    ),
                    event_size(input_bytes=body_size, outputs=predictions, probabilities=probabilities),
                )
            self._to_shadow(columns, request_id, event_id, pinned is not None, key, timestamp, body_size)

        if chunks:
            header = _encode_json(response)
            headers.append((binary.HEADER, str(len(header))))
            return self._send(start_response, 200, header + b"".join(chunks), binary.CONTENT_TYPE, headers, after)
        return self._json(start_response, 200, response, headers, after)

    def _answer_error(
        self,
        start_response: StartResponse,
        error: HttpError,
        protocol: str,
        version: LoadedVersion | None,
        request_id: str,
        columns: Mapping[str, list] | None,
        key: str | None,
        started: float,
        body_size: int,
        pinned: bool,
    ) -> Iterable[bytes]:
        latency = time.perf_counter() - started
        version_id = version.id if version else "none"
        headers = [("X-Request-Id", request_id)]
        if version is not None:
            headers.append(("X-Model-Version", version.id))
        body = {"error": error.message, "field": error.field, "request_id": request_id}
        if version is not None:
            body["model_version"] = version.id

        def after() -> None:
            self._count(version_id, protocol, error.status, latency)
            event_id = new_request_id()
            if self.shipper is not None:
                self.shipper.record(
                    event(
                        request_id=request_id,
                        event_id=event_id,
                        version_id=version.ref.version_id if version else None,
                        inputs=columns,
                        outputs=None,
                        probabilities=None,
                        latency_ms=round(latency * 1000, 3),
                        status=error.status,
                        error=error.message,
                        request_key=key,
                        shadow=False,
                        pinned=pinned,
                        timestamp=time.time(),
                    ),
                    event_size(input_bytes=body_size if columns is not None else 0, outputs=None, probabilities=None),
                )
            if columns is not None and error.status == 500:
                # The shadow still sees requests the live version could not answer: that is what it is for.
                self._to_shadow(columns, request_id, event_id, pinned, key, time.time(), body_size)

        return self._json(start_response, error.status, body, headers, after)

    def _count(self, version_id: str, protocol: str, status: int, latency: float) -> None:
        status_text = str(status)
        self.metrics.inc(
            "model_server_requests_total", (("version", version_id), ("protocol", protocol), ("status", status_text))
        )
        if status >= 400:
            self.metrics.inc("model_server_request_errors_total", (("version", version_id), ("status", status_text)))
        self.metrics.observe("model_server_request_duration_seconds", (("version", version_id),), latency)

    # ------------------------------------------------------------------ shadow

    def _to_shadow(
        self,
        columns: Mapping[str, list] | None,
        request_id: str,
        event_id: str,
        pinned: bool,
        key: str | None,
        ts: float,
        body_size: int,
    ) -> None:
        if self._shadow_queue is None or columns is None:
            return
        try:
            self._shadow_queue.put_nowait((columns, request_id, event_id, pinned, key, ts, body_size))
        except queue.Full:
            self.metrics.inc("model_server_shadow_skipped_total")

    def _shadow_loop(self) -> None:
        shadow = self.shadow
        assert shadow is not None and self._shadow_queue is not None
        while True:
            item = self._shadow_queue.get()
            if item is None:
                return
            columns, request_id, event_id, pinned, key, timestamp, body_size = item
            started = time.perf_counter()
            predictions = probabilities = error = None
            status = 200
            try:
                predictions, probabilities = shadow.predict(columns)
            except InputError as exc:
                status, error = 400, str(exc)
            except Exception as exc:  # the shadow's failures are only logged, like its answers
                status, error = 500, f"the model failed to predict: {exc}"
            latency = time.perf_counter() - started
            self.metrics.inc("model_server_shadow_predictions_total", (("version", shadow.id), ("status", str(status))))
            if self.shipper is not None:
                self.shipper.record(
                    event(
                        request_id=request_id,
                        event_id=event_id,
                        version_id=shadow.ref.version_id,
                        inputs=columns,
                        outputs=predictions,
                        probabilities=probabilities,
                        latency_ms=round(latency * 1000, 3),
                        status=status,
                        error=error,
                        request_key=key,
                        shadow=True,
                        pinned=pinned,
                        timestamp=timestamp,
                    ),
                    event_size(input_bytes=body_size, outputs=predictions, probabilities=probabilities),
                )

    # ------------------------------------------------------------------ lifecycle

    def _snapshot_loop(self) -> None:
        assert self.shared is not None
        ticks = 0
        while not self._stop.wait(SNAPSHOT_INTERVAL_SECONDS):
            self._buffer_gauges()
            try:
                self.shared.write()
                ticks += 1
                if ticks % COMPACT_EVERY_TICKS == 0:
                    self.shared.compact()
            except OSError as exc:
                logger.warning("could not write the metrics snapshot: %s", exc)

    def close(self, timeout: float = 2.0) -> None:
        """Finish shadow work, flush prediction events (within `timeout`) and leave a final metrics snapshot."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._shadow_queue is not None:
            try:
                self._shadow_queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
        if self.shipper is not None:
            self.shipper.close(max(0.1, deadline - time.monotonic()))
        if self.shared is not None:
            try:
                self.shared.write(final=True)
            except OSError as exc:
                logger.warning("could not write the final metrics snapshot: %s", exc)


_ROUTES: dict[str, Callable[[ModelServer], tuple[int, Any]]] = {
    "/v2/health/live": ModelServer._live,
    "/v2/health/ready": ModelServer._ready,
    "/v2": ModelServer._server_metadata,
    # MLflow's scoring server answers these; load balancers configured for MLflow keep working.
    "/ping": ModelServer._ready,
    "/health": ModelServer._ready,
}


def create_app(spec_path: str | Path, *, metrics_dir: str | Path | None = None) -> ModelServer:
    """Read the spec file now (a reloaded worker must see the current one) and load every model."""
    return ModelServer(load_spec(spec_path), metrics_dir=metrics_dir)
