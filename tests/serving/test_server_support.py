"""Shared pieces of the model server tests: tiny real models, server processes, an event sink.

Run the server tests without Django: `pytest -p no:django --confcutdir=tests/serving tests/serving`
(`--confcutdir` keeps the Django fixtures of tests/conftest.py out).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.bundle import save_bundle
from serving.signature import infer_signature

REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["x1", "x2", "count"]
START_TIMEOUT_SECONDS = 60.0


def training_frame(rows: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.normal(size=rows),
            "count": rng.integers(0, 10, size=rows),
        }
    )
    target = np.where(frame["x1"] + 0.5 * frame["x2"] > 0, "yes", "no")
    return frame, target


class ExplodingModel:
    """A custom (pickled) regression model that fails on inputs with x1 > 1000, for the 500 path."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if (frame["x1"] > 1000).any():
            raise ValueError("x1 out of range")
        return frame["x1"].to_numpy() * 2


@dataclass
class Bundle:
    path: str
    sha256: str


def save_random_forest(directory: Path, name: str, *, seed: int, trees: int = 10) -> Bundle:
    from sklearn.ensemble import RandomForestClassifier

    frame, target = training_frame(seed=seed)
    model = RandomForestClassifier(n_estimators=trees, max_depth=4, random_state=seed).fit(frame, target)
    path = directory / f"{name}.zip"
    sha = save_bundle(
        path,
        flavor="sklearn",
        task="classification",
        signature=infer_signature(frame, target_kind="classification", classes=list(model.classes_)),
        input_example=frame.head(3),
        classes=list(model.classes_),
        params={"n_estimators": trees},
        pipeline=model,
    )
    return Bundle(str(path), sha)


def save_xgboost(directory: Path, name: str, *, trees: int = 10, regression: bool = True) -> Bundle:
    import xgboost as xgb

    frame, target = training_frame(seed=1)
    if regression:
        label = frame["x1"].to_numpy() * 3 + frame["x2"].to_numpy()
        params = {"objective": "reg:squarederror", "max_depth": 4}
        classes = None
    else:
        label = (target == "yes").astype(int)
        params = {"objective": "binary:logistic", "max_depth": 4}
        classes = ["no", "yes"]
    booster = xgb.train(params, xgb.DMatrix(frame.to_numpy(np.float64), label=label), num_boost_round=trees)
    task = "regression" if regression else "classification"
    path = directory / f"{name}.zip"
    sha = save_bundle(
        path,
        flavor="xgboost",
        task=task,
        signature=infer_signature(frame, target_kind=task, classes=classes),
        input_example=frame.head(3),
        classes=classes,
        params=params,
        booster=booster,
    )
    return Bundle(str(path), sha)


def save_exploding(directory: Path) -> Bundle:
    frame, _ = training_frame()
    path = directory / "exploding.zip"
    sha = save_bundle(
        path,
        flavor="custom",
        task="regression",
        signature=infer_signature(frame, target_kind="regression", classes=None),
        input_example=frame.head(3),
        classes=None,
        params=None,
        custom_model=ExplodingModel(),
    )
    return Bundle(str(path), sha)


def version(version_id: str, bundle: Bundle, weight: int) -> dict:
    return {
        "version_id": version_id,
        "label": f"label-{version_id}",
        "artifact_path": bundle.path,
        "sha256": bundle.sha256,
        "weight": weight,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("the condition was not met in time")


# ------------------------------------------------------------------------------------------ event sink


@dataclass
class EventSink:
    """A local HTTP server standing in for the console's ingest endpoint; records what it receives."""

    server: ThreadingHTTPServer
    posts: list[dict] = field(default_factory=list)
    status: int = 202

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/ingest/events"

    def events(self) -> list[dict]:
        return [event for post in list(self.posts) for event in post["body"]["events"]]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if predicate(events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"the sink did not receive the expected events; it has {len(self.events())}")


def start_sink() -> EventSink:
    holder: dict[str, EventSink] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            sink = holder["sink"]
            sink.posts.append(
                {"path": self.path, "authorization": self.headers.get("Authorization"), "body": json.loads(body)}
            )
            self.send_response(sink.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = EventSink(server)
    holder["sink"] = sink
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return sink


# ------------------------------------------------------------------------------------------ server process


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    spec_path: Path
    pid_file: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, raw: bytes | None = None
    ) -> tuple[int, dict, Any]:
        """One request on a fresh connection: status, headers (lower-cased names), decoded JSON or text."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            payload = response.read()
            response_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        if response_headers.get("content-type", "").startswith("application/json"):
            return response.status, response_headers, json.loads(payload)
        return response.status, response_headers, payload.decode()

    def post(self, path: str, body: Any, headers: dict | None = None) -> tuple[int, dict, Any]:
        return self.request("POST", path, body, headers)

    def get(self, path: str) -> tuple[int, dict, Any]:
        return self.request("GET", path)

    def master_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def worker_pids(self) -> set[int]:
        """The master's child processes, read from /proc."""
        master = self.master_pid()
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # The command name (field 2) is in parentheses and may hold spaces; the parent pid follows it.
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master:
                children.add(int(stat.parent.name))
        return children

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _, _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            pairs = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part)
            if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def write_spec(path: Path, spec: dict) -> None:
    """Write atomically, as the console must: a reloading worker never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, path)


def start_server(directory: Path, spec: dict, *, workers: int = 1, options: tuple[str, ...] = ()) -> ServerProcess:
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "spec.json"
    write_spec(spec_path, spec)
    port = free_port()
    pid_file = directory / "server.pid"
    log_path = directory / "server.log"
    # The server's run folder (with a ready marker per worker) lands in `directory`.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(directory)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--spec", str(spec_path), "--port", str(port)]
            + ["--workers", str(workers), "--pid-file", str(pid_file), *options],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, spec_path, pid_file, log_path)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            status, _, _ = server.get("/v2/health/ready")
            # Every worker, not just the first: a test of how workers share connections needs them all.
            if status == 200 and pid_file.exists() and len(list(directory.glob("model-server-*/ready/*"))) >= workers:
                return server
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"the server did not become ready:\n{server.log()}")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    directory = tmp_path_factory.mktemp("bundles")
    return {
        "rf_a": save_random_forest(directory, "rf_a", seed=0),
        "rf_b": save_random_forest(directory, "rf_b", seed=7),
        "xgb": save_xgboost(directory, "xgb", regression=False),
        "xgb_reg": save_xgboost(directory, "xgb_reg", regression=True),
        "exploding": save_exploding(directory),
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[EventSink]:
    sink = start_sink()
    yield sink
    sink.server.shutdown()
    sink.server.server_close()


def rows(count: int, seed: int = 3) -> list[dict]:
    frame, _ = training_frame(rows=count, seed=seed)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in frame.to_dict("records")]
