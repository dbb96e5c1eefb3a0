"""Model server benchmark: our server against `mlflow models serve` and Seldon's MLServer, same models and payloads.

Run: `make bench`, or without Django:
    pytest -p no:django --confcutdir=tests/bench tests/bench/test_serving_bench.py -s
or as a script: `python tests/bench/test_serving_bench.py`.

MLflow lives only in a separate virtualenv (never in requirements.txt): BENCH_MLFLOW_VENV, default
var/bench/mlflow-venv in the repository (ignored by git). Create it once with
    python3 -m venv var/bench/mlflow-venv && var/bench/mlflow-venv/bin/pip install \
        mlflow scikit-learn==1.9.1 xgboost==3.2.0
Without it, only our server is measured and the table says why.

MLServer (what KServe runs for scikit-learn and XGBoost on the V2 protocol) is the second peer, also only in a
virtualenv of its own (BENCH_MLSERVER_VENV, default var/bench/mlserver-venv), created once with
    python3 -m venv var/bench/mlserver-venv && var/bench/mlserver-venv/bin/pip install \
        mlserver mlserver-xgboost mlserver-sklearn scikit-learn==1.9.1 xgboost==3.2.0 uvloop==0.21.0
(MLServer 1.7.1's inference workers do not start with uvloop 0.22 or later: "There is no current event loop").
It serves the same XGBoost booster (as an XGBClassifier file, so that it answers predict_proba) and the same
random forest (joblib), and gets the same V2 JSON body as our server's V2 endpoint, measured just after ours in
each cell: every column an FP64 input, only `predict_proba` asked for. Its settings are MLSERVER_SETTINGS with
each of MLSERVER_CONFIGS (see there why two), and each cell reports the faster. Every MLServer's probabilities
are checked equal to ours before the measurements.

The load generator shares the machine's cores with both servers, so it should cost as little CPU as possible:
it is `wrk` (`apt-get install wrk`) when installed, with a Lua script that posts the payload and reports
requests, errors and latency percentiles (wrk's latency runs from writing a request to reading its response,
so it leaves out the TCP connect that our server's one-request connections need: ~0.05 ms on loopback).
Without wrk (or with BENCH_LOAD=python), a Python generator runs in separate processes (4 processes x 4
threads for 16 connections) sending prebuilt request bytes; it takes several times more CPU per request, so
both servers measure slower with it. Either way each connection is persistent and reconnects when the
server closes it, and both servers get the same generator in the same run. Prediction logging is on: our
server ships its events to a recording sink in this process.

A second table measures one large batch (1,000 rows, XGBoost) on our server's V2 endpoint in both encodings,
side by side in the same run: JSON (`data` lists), and the binary tensor extension (inputs and outputs as raw
little-endian bytes after a JSON header, as NVIDIA's tritonclient sends them by default).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving.bundle import save_bundle  # noqa: E402
from serving.signature import infer_signature  # noqa: E402

pytestmark = pytest.mark.bench

MLFLOW_VENV = Path(os.environ.get("BENCH_MLFLOW_VENV", ROOT / "var" / "bench" / "mlflow-venv"))
MLSERVER_VENV = Path(os.environ.get("BENCH_MLSERVER_VENV", ROOT / "var" / "bench" / "mlserver-venv"))
# MLServer's settings.json beyond its ports. Its defaults log every request (debug), pass every response through
# a gzip middleware (below its 500-byte minimum size here anyway) and a Prometheus middleware: all off, its
# fastest. Its HTTP front is one process; `parallel_workers` moves predictions to that many processes. Neither
# choice was the faster one in every cell on 2 cores (0 at 1 connection, 2 at 16 more often than not), so it
# runs in both and each cell reports the faster; BENCH_MLSERVER_CONFIGS (a JSON list of objects) replaces them.
MLSERVER_SETTINGS = {"debug": False, "gzip_enabled": False, "metrics_endpoint": None}
MLSERVER_CONFIGS = json.loads(
    os.environ.get("BENCH_MLSERVER_CONFIGS", '[{"parallel_workers": 0}, {"parallel_workers": 2}]')
)
WORKERS = 2
# MLflow's two uvicorn workers share its socket, and which one accepts a burst of new connections is a race: in
# most runs one worker takes all 16 and MLflow works on one core, in some they split 8/8 and it is 2.5-3x
# faster. Its cells at more than one connection are measured this many times and the fastest is kept (its
# best, as MLServer's best config is kept), with how its workers shared the connections each time.
MLFLOW_ATTEMPTS = int(os.environ.get("BENCH_MLFLOW_ATTEMPTS", "3"))
FEATURES = 10
WARMUP_SECONDS = 1.0
MEASURE_SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CONCURRENCY = (1, 16)
BATCHES = (1, 32)
V2_BATCH_ROWS = 1000
V2_PATH = "/v2/models/bench/infer"
START_TIMEOUT_SECONDS = 120.0
WRK = shutil.which("wrk")
LOAD_GENERATOR = "python" if os.environ.get("BENCH_LOAD") == "python" or WRK is None else "wrk"
# Same thread budget for both servers: one thread per prediction, two worker processes on two cores.
JSON = "application/json"
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ models


def _data(rows: int = 5000) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, FEATURES)), columns=[f"f{i}" for i in range(FEATURES)])
    target = np.where(frame["f0"] + frame["f1"] * frame["f2"] - frame["f3"] > 0, "yes", "no")
    return frame, target


def build_models(directory: Path) -> dict[str, dict]:
    """Both models, as our bundle and as the raw objects MLflow will save in its own format."""
    import joblib
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    frame, target = _data()
    classes = ["no", "yes"]
    signature = infer_signature(frame, target_kind="classification", classes=classes)
    forest = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0).fit(frame, target)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "nthread": 1},
        xgb.DMatrix(frame.to_numpy(), label=(target == "yes").astype(int), feature_names=list(frame.columns)),
        num_boost_round=200,
    )
    models = {}
    for name, kwargs in [("random_forest_100", {"pipeline": forest}), ("xgboost_200", {"booster": booster})]:
        path = directory / f"{name}.zip"
        sha = save_bundle(
            path,
            flavor="sklearn" if "pipeline" in kwargs else "xgboost",
            task="classification",
            signature=signature,
            input_example=frame.head(3),
            classes=classes,
            params=None,
            **kwargs,
        )
        models[name] = {"bundle": str(path), "sha256": sha}
    (directory / "forest.pkl").write_bytes(pickle.dumps(forest))
    booster.save_model(str(directory / "booster.ubj"))
    # MLServer's XGBoost runtime loads a file as the scikit-learn estimator it was saved from (a regressor when
    # the file does not say): marked as a classifier, the same booster answers predict_proba there.
    marked = booster.copy()
    marked.set_attr(scikit_learn=json.dumps({"_estimator_type": "classifier"}))
    for name in models:
        (directory / "mlserver" / name).mkdir(parents=True)
    marked.save_model(str(directory / "mlserver" / "xgboost_200" / "model.json"))
    joblib.dump(forest, directory / "mlserver" / "random_forest_100" / "model.joblib")
    models["random_forest_100"]["raw"] = str(directory / "forest.pkl")
    models["xgboost_200"]["raw"] = str(directory / "booster.ubj")
    (directory / "example.json").write_text(frame.head(3).to_json(orient="split"))
    return models


MLFLOW_SAVE = textwrap.dedent(
    """
    import json, pickle, sys
    import pandas as pd
    import mlflow.sklearn, mlflow.xgboost, xgboost as xgb
    from mlflow.models import infer_signature
    directory = sys.argv[1]
    example = pd.read_json(directory + "/example.json", orient="split")
    forest = pickle.load(open(directory + "/forest.pkl", "rb"))
    # MLflow 3 stores sklearn models with skops and wants the tree type named as trusted (we built it).
    mlflow.sklearn.save_model(forest, directory + "/mlflow_random_forest_100",
                              signature=infer_signature(example, forest.predict(example)),
                              skops_trusted_types=["sklearn.tree._tree.Tree"])
    booster = xgb.Booster()
    booster.load_model(directory + "/booster.ubj")
    mlflow.xgboost.save_model(booster, directory + "/mlflow_xgboost_200", signature=infer_signature(example))
    """
)


def mlflow_unavailable() -> str | None:
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        return f"mlflow is not installed in {MLFLOW_VENV} (see this file's docstring)"
    return None


# ------------------------------------------------------------------------------------------ sink, servers


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    events = 0

    def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        # Counted, not parsed: the sink shares the cores with the servers measured (a real console ingests on a
        # host of its own), and parsing took ~9 % of a core with json at 1,500 32-row events a second. Every event
        # has one "event_id" key, and no string value can hold that quoted key unescaped.
        _Sink.events += body.count(b'"event_id":')
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, path: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")


def start_ours(
    directory: Path, model: dict, sink_url: str, program: tuple[str, ...] = ("-m", "serving")
) -> tuple[subprocess.Popen, int]:
    spec = {
        "deployment_id": "bench",
        "name": "bench",
        "token": "bench-token",
        "console_url": sink_url,
        "versions": [{"version_id": "v1", "artifact_path": model["bundle"], "sha256": model["sha256"], "weight": 100}],
        "shadow": None,
    }
    spec_path = directory / f"spec-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    port = free_port()
    log = spec_path.with_suffix(".log")
    command = [sys.executable, *program, "--spec", str(spec_path), "--port", str(port)]
    command += ["--workers", str(WORKERS), "--log-level", "warning"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **THREAD_ENV, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    wait_ready(port, "/v2/health/ready", process, log)
    return process, port


def start_mlflow(directory: Path, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = directory / f"mlflow-{name}.log"
    command = [str(MLFLOW_VENV / "bin" / "mlflow"), "models", "serve", "-m", str(directory / f"mlflow_{name}")]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]
    env = {**os.environ, **THREAD_ENV, "PATH": f"{MLFLOW_VENV / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    wait_ready(port, "/ping", process, log)
    return process, port


def mlserver_unavailable() -> str | None:
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        return f"mlserver is not installed in {MLSERVER_VENV} (see this file's docstring)"
    return None


MLSERVER_RUNTIMES = {
    "xgboost_200": "mlserver_xgboost.XGBoostModel",
    "random_forest_100": "mlserver_sklearn.SKLearnModel",
}


def start_mlserver(directory: Path, name: str, config: dict) -> tuple[subprocess.Popen, int]:
    """MLServer serving one model as "bench", with these settings on top of MLSERVER_SETTINGS."""
    folder = directory / "mlserver" / f"{name}-{time.monotonic_ns()}"
    shutil.copytree(directory / "mlserver" / name, folder)
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        **MLSERVER_SETTINGS,
        **config,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "bench",
        "implementation": MLSERVER_RUNTIMES[name],
        # Requests carry one FP64 input per column: decoded as one pandas DataFrame, as the models were fitted on.
        "parameters": {"uri": "./", "content_type": "pd"},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    log = folder / "mlserver.log"
    env = {**os.environ, **THREAD_ENV, "PATH": f"{MLSERVER_VENV / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    wait_ready(port, "/v2/models/bench/ready", process, log)
    return process, port


def stop(process: subprocess.Popen) -> None:
    # Both servers run in their own session, so that their workers are stopped with them.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# ------------------------------------------------------------------------------------------ load generator


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[int, bool, bytes]:
    """Read one HTTP response; returns (status, server wants to close, leftover bytes)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return status, headers.get(b"connection", b"").lower() == b"close", rest[length:]


def _connection_loop(port: int, request: bytes, start_at: float, end_at: float, out: list, errors: list) -> None:
    sock: socket.socket | None = None
    buffer = b""
    while True:
        now = time.perf_counter()
        if now >= end_at:
            break
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer = b""
            sock.sendall(request)
            status, close, buffer = _read_response(sock, buffer)
            done = time.perf_counter()
            if now >= start_at:
                out.append(done - now)
                if status != 200:
                    errors.append(status)
            if close:
                sock.close()
                sock = None
        except OSError:
            if sock is not None:
                sock.close()
            sock = None
            if now >= start_at:
                errors.append(0)


def _load_process(port: int, request: bytes, threads: int, start_at: float, end_at: float, queue: Any) -> None:
    latencies: list[float] = []
    errors: list[int] = []
    workers = [
        threading.Thread(target=_connection_loop, args=(port, request, start_at, end_at, latencies, errors))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put((latencies, errors))


def run_load(port: int, request: bytes, connections: int) -> dict:
    processes = 1 if connections == 1 else 4
    threads = connections // processes
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    # perf_counter is CLOCK_MONOTONIC on Linux, shared by forked processes.
    start_at = time.perf_counter() + 0.3 + WARMUP_SECONDS
    end_at = start_at + MEASURE_SECONDS
    children = [
        context.Process(target=_load_process, args=(port, request, threads, start_at, end_at, queue))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    latencies: list[float] = []
    errors: list[int] = []
    for _ in children:
        got_latencies, got_errors = queue.get(timeout=MEASURE_SECONDS + 60)
        latencies += got_latencies
        errors += got_errors
    for child in children:
        child.join()
    latencies.sort()
    count = len(latencies)
    return {
        "rps": count / MEASURE_SECONDS,
        "p50": latencies[count // 2] * 1000 if count else float("nan"),
        "p99": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else float("nan"),
        "errors": len(errors),
    }


# Prints one line for `run_wrk` to parse: requests, microseconds, p50 and p99 in microseconds, errors.
WRK_SCRIPT = """
wrk.method = "POST"
%s
local file = io.open("%s", "rb")
wrk.body = file:read("*a")
file:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def session_cpu_seconds(session: int) -> float:
    """CPU time (user + system) used so far by the processes of a session: a server and all its workers."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # After the command's closing parenthesis: state, ppid, pgrp, session, ... utime (12th), stime (13th).
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int,
    body_path: Path,
    connections: int,
    path: str = "/invocations",
    headers: dict[str, str] | None = None,
    session: int | None = None,
) -> dict:
    script = body_path.with_suffix(".lua")
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in {"Content-Type": JSON, **(headers or {})}.items())
    script.write_text(WRK_SCRIPT % (lines, body_path))
    command = [str(WRK), "-t", "1" if connections == 1 else "2", "-c", str(connections), "-s", str(script)]
    url = f"http://127.0.0.1:{port}{path}"
    subprocess.run([*command, "-d", f"{max(1, round(WARMUP_SECONDS))}s", url], capture_output=True, check=True)
    cpu_before = session_cpu_seconds(session) if session is not None else float("nan")
    result = subprocess.run(
        [*command, "-d", f"{max(1, round(MEASURE_SECONDS))}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH "))
    cpu = (session_cpu_seconds(session) if session is not None else float("nan")) - cpu_before
    requests, duration_us, p50_us, p99_us, errors = (int(value) for value in line.split()[1:])
    return {
        "rps": requests / (duration_us / 1e6),
        "p50": p50_us / 1000,
        "p99": p99_us / 1000,
        "errors": errors,
        # The server's CPU per request: moved far less than req/s by other jobs taking turns on the cores.
        "cpu_ms": cpu * 1000 / max(requests, 1),
    }


def connections_per_process(root: int, port: int) -> list[int]:
    """How many established connections to `port` each process of the server `root` holds, most first."""
    counts = []
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []
    for process in processes:
        try:
            held = sum(1 for c in process.net_connections("tcp") if c.status == "ESTABLISHED" and c.laddr.port == port)
        except psutil.Error:
            continue
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def measure_with_split(port: int, body_path: Path, connections: int, path: str, session: int) -> dict:
    """`measure`, with how the server's processes shared the connections half way through the measured run."""
    split: list[int] = []
    # run_wrk warms up with one wrk run, then measures with another (new connections): sampled in the second.
    sampler = threading.Timer(
        WARMUP_SECONDS + 0.2 + MEASURE_SECONDS / 2, lambda: split.extend(connections_per_process(session, port))
    )
    sampler.start()
    try:
        measured = measure(port, body_path, connections, path, session=session)
    finally:
        sampler.cancel()
        sampler.join()
    return {**measured, "split": split}


def http_request(port: int, body: bytes, path: str = "/invocations", headers: dict[str, str] | None = None) -> bytes:
    fields = {"Host": f"127.0.0.1:{port}", "Content-Type": JSON, **(headers or {}), "Content-Length": str(len(body))}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + body


def measure(
    port: int,
    body_path: Path,
    connections: int,
    path: str = "/invocations",
    headers: dict | None = None,
    session: int | None = None,
) -> dict:
    """req/s, latency, errors and, with wrk and the server's session id, the server's CPU ms per request."""
    if LOAD_GENERATOR == "wrk":
        return run_wrk(port, body_path, connections, path, headers, session)
    measured = run_load(port, http_request(port, body_path.read_bytes(), path, headers), connections)
    return {**measured, "cpu_ms": float("nan")}


def payload(rows: int) -> bytes:
    frame, _ = _data(rows + 100)
    sample = frame.tail(rows)
    return json.dumps(
        {"dataframe_split": {"columns": list(sample.columns), "data": sample.to_numpy().tolist()}}
    ).encode()


def v2_bodies(rows: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Encoding -> (body, extra headers) of one V2 request for `rows` rows: JSON, and binary in and out."""
    frame, _ = _data(rows + 100)
    sample = frame.tail(rows)
    as_json = {
        "inputs": [
            {"name": name, "shape": [rows], "datatype": "FP64", "data": sample[name].tolist()}
            for name in sample.columns
        ]
    }
    data = [np.ascontiguousarray(sample[name].to_numpy(), dtype="<f8").tobytes() for name in sample.columns]
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": [rows], "datatype": "FP64", "parameters": {"binary_data_size": len(chunk)}}
                for name, chunk in zip(sample.columns, data, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return {"json": (json.dumps(as_json).encode(), {}), "binary": (header + b"".join(data), binary_headers)}


def v2_probabilities(port: int, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """predict_proba from one request, decoded from either encoding (to check both give the same answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", V2_PATH, body=body, headers={"Content-Type": JSON, **headers})
        response = connection.getresponse()
        content = response.read()
        assert response.status == 200, content[:500]
        length = response.getheader("Inference-Header-Content-Length")
    finally:
        connection.close()
    header = json.loads(content[: int(length)] if length else content)
    offset = int(length or 0)
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["name"] == "predict_proba":
            if size is None:
                return np.asarray(output["data"], dtype=np.float64)
            return np.frombuffer(content[offset : offset + size], dtype="<f8")
        offset += size or 0
    raise AssertionError("no predict_proba in the answer")


def v2_peer_body(rows: int) -> bytes:
    """The V2 JSON body our server and MLServer both get: one FP64 input per column, predict_proba asked for."""
    body = json.loads(v2_bodies(rows)["json"][0])
    body["outputs"] = [{"name": "predict_proba"}]
    return json.dumps(body).encode()


def check_same_probabilities(ours: int, mlserver: int, directory: Path) -> None:
    # XGBoost computes in float32 and MLServer answers FP32, the first class's probability as 1 - p in float32
    # (ours in float64 from the same p): equal to float32's resolution near 1, 6e-8.
    body = (directory / f"v2-peer-{BATCHES[-1]}.json").read_bytes()
    np.testing.assert_allclose(
        v2_probabilities(ours, body, {}), v2_probabilities(mlserver, body, {}), rtol=1e-6, atol=1e-7
    )


def run_v2_batches(port: int, session: int, directory: Path) -> list[dict]:
    """req/s of a 1,000-row batch on our V2 endpoint, JSON and binary, alternating cell by cell."""
    bodies = v2_bodies(V2_BATCH_ROWS)
    answers = [v2_probabilities(port, body, headers) for body, headers in bodies.values()]
    np.testing.assert_array_equal(answers[0], answers[1])
    results = []
    for connections in CONCURRENCY:
        for encoding, (body, headers) in bodies.items():
            body_path = directory / f"v2-{encoding}-{V2_BATCH_ROWS}.body"
            body_path.write_bytes(body)
            measured = measure(port, body_path, connections, V2_PATH, headers, session)
            results.append(
                {
                    "encoding": encoding,
                    "rows": V2_BATCH_ROWS,
                    "connections": connections,
                    "body_bytes": len(body),
                    "load": os.getloadavg()[0],
                    **measured,
                }
            )
    return results


RAW_PREDICT = textwrap.dedent(
    """
    import json, sys, time
    from serving.loader import load_predictor
    from serving.signature import payload_to_columns
    predictor = load_predictor(sys.argv[1])
    out = {}
    for rows in (1, 32):
        columns = payload_to_columns(json.loads(open(sys.argv[2] + f"/payload-{rows}.json").read()))
        for _ in range(50):
            predictor.predict_proba(columns)
        times = []
        for _ in range(300):
            start = time.perf_counter()
            predictor.predict_proba(columns)
            times.append(time.perf_counter() - start)
        times.sort()
        out[rows] = times[len(times) // 2] * 1000
    sys.stdout.write(json.dumps(out))
    """
)


def raw_predict_ms(bundle: str, directory: Path) -> dict[int, float]:
    """Median in-process predict time (the loader's predict_proba, as the server calls it) per batch size."""
    result = subprocess.run(
        [sys.executable, "-c", RAW_PREDICT, bundle, str(directory)],
        cwd=ROOT,
        env={**os.environ, **THREAD_ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(k): v for k, v in json.loads(result.stdout).items()}


# ------------------------------------------------------------------------------------------ the benchmark


def run_benchmark() -> tuple[list[dict], list[dict]]:
    load_at_start = os.getloadavg()
    directory = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    models = build_models(directory)
    for rows in BATCHES:
        (directory / f"payload-{rows}.json").write_bytes(payload(rows))
        (directory / f"v2-peer-{rows}.json").write_bytes(v2_peer_body(rows))
    why_no_mlserver = mlserver_unavailable()
    why_no_mlflow = mlflow_unavailable()
    if why_no_mlflow is None:
        saved = subprocess.run(
            [str(MLFLOW_VENV / "bin" / "python"), "-c", MLFLOW_SAVE, str(directory)], capture_output=True, text=True
        )
        if saved.returncode != 0:
            why_no_mlflow = f"saving the models in MLflow format failed: {saved.stderr.strip().splitlines()[-1:]}"
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.daemon_threads = True
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    sink_url = f"http://127.0.0.1:{sink.server_address[1]}/ingest"

    results = []
    batches: list[dict] = []
    for name, model in models.items():
        raw = raw_predict_ms(model["bundle"], directory)
        # Each peer gets its own protocol, and our server the same request on the same protocol just before it.
        starts = [("ours", lambda model=model: start_ours(directory, model, sink_url))]
        if why_no_mlflow is None:
            starts.append(("mlflow", lambda name=name: start_mlflow(directory, name)))
        if why_no_mlserver is None:
            for index, config in enumerate(MLSERVER_CONFIGS):
                starts.append(
                    (f"mlserver{index}", lambda name=name, config=config: start_mlserver(directory, name, config))
                )
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for server_name, start in starts:
                servers[server_name] = start()
            ours_process, ours_port = servers["ours"]
            cell_servers = [("ours", ours_process, ours_port, "/invocations")]
            if "mlflow" in servers:
                cell_servers.append(("mlflow", *servers["mlflow"], "/invocations"))
            mlservers = [
                (server_name, *server, V2_PATH) for server_name, server in servers.items() if "mlserver" in server_name
            ]
            for _, _, port, _ in mlservers:
                check_same_probabilities(ours_port, port, directory)
            if mlservers:
                cell_servers += [("ours_v2", ours_process, ours_port, V2_PATH), *mlservers]
            # Cell by cell, each server in turn (an idle server costs nothing): when other jobs load the
            # machine, both sides of a comparison are measured seconds apart, not a whole model apart.
            for rows in BATCHES:
                for connections in CONCURRENCY:
                    for server_name, process, port, path in cell_servers:
                        body = f"payload-{rows}.json" if path == "/invocations" else f"v2-peer-{rows}.json"
                        attempts = MLFLOW_ATTEMPTS if server_name == "mlflow" and connections > 1 else 1
                        tries = [
                            measure_with_split(port, directory / body, connections, path, process.pid)
                            for _ in range(attempts)
                        ]
                        measured = {
                            **max(tries, key=lambda measured: measured["rps"]),
                            "attempts": [(measured["rps"], measured["split"]) for measured in tries],
                        }
                        results.append(
                            {
                                "model": name,
                                "server": server_name,
                                "rows": rows,
                                "connections": connections,
                                "raw_ms": raw[rows],
                                "load": os.getloadavg()[0],
                                **measured,
                            }
                        )
            if name == "xgboost_200":
                batches = run_v2_batches(ours_port, ours_process.pid, directory)
        finally:
            for process, _ in servers.values():
                stop(process)
    sink.shutdown()
    print_table(results, why_no_mlflow, why_no_mlserver, _Sink.events, load_at_start)
    print_batch_table(batches)
    return results, batches


def best_mlserver(results: list[dict], model: str, rows: int, connections: int) -> dict | None:
    """MLServer's result for the cell in whichever of its configurations served more requests."""
    cell = [
        r
        for r in results
        if r["server"].startswith("mlserver")
        and (r["model"], r["rows"], r["connections"]) == (model, rows, connections)
    ]
    return max(cell, key=lambda r: r["rps"], default=None)


def print_table(
    results: list[dict],
    why_no_mlflow: str | None,
    why_no_mlserver: str | None,
    events: int,
    load_at_start: tuple[float, ...],
) -> None:
    print()
    print(
        f"Model server benchmark: {WORKERS} server processes for ours and MLflow (MLServer: one HTTP process, "
        f"settings {json.dumps(MLSERVER_SETTINGS)}), {MEASURE_SECONDS:.0f} s per cell, logging on"
    )
    if LOAD_GENERATOR == "wrk":
        print(f"load generator: {WRK}")
    elif WRK is None:
        print("load generator: Python (wrk is not installed: `apt-get install wrk` for a generator taking less CPU)")
    else:
        print("load generator: Python (BENCH_LOAD=python)")
    # Other jobs on the machine take CPU from every server: the load average says how busy it was (the table's
    # last column: the 1-minute load average after the cell's last server).
    print(
        "load average (1, 5, 15 min) at the start / at the end: "
        + " / ".join(" ".join(f"{value:.2f}" for value in sample) for sample in (load_at_start, os.getloadavg()))
    )
    print("ours and mlflow: dataframe_split on /invocations; ours v2 and mlserver: the same V2 JSON body")
    print("cpu ms: the server's CPU time (all its processes, user + system) per request answered")

    def side(result: dict | None, width: int) -> str:
        if result is None:
            return f"{'-':>{width}} {'-':>7} {'-':>7} {'-':>6}"
        return f"{result['rps']:>{width}.0f} {result['p50']:>7.2f} {result['p99']:>7.2f} {result['cpu_ms']:>6.2f}"

    def ratio(ours: dict | None, theirs: dict | None) -> str:
        # Theirs over ours in CPU per request: the req/s ratio the servers would show on cores of their own.
        if not (ours and theirs):
            return f"{'-':>11}"
        return f"{ours['rps'] / max(theirs['rps'], 1e-9):>5.1f}/{theirs['cpu_ms'] / max(ours['cpu_ms'], 1e-9):<5.1f}"

    columns = " ".join([f"{'p50 ms':>7}", f"{'p99 ms':>7}", f"{'cpu ms':>6}"])
    header = (
        f"{'model':<18} {'rows':>4} {'conn':>4} | {'ours rps':>9} {columns} | {'mlflow rps':>10} {columns} | "
        f"{'x rps/cpu':>11} | {'ours v2':>9} {columns} | {'mlserver':>9} {columns} | {'x rps/cpu':>11} | "
        f"{'raw ms':>6} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(r["model"], r["server"], r["rows"], r["connections"]): r for r in results}
    for (model, server, rows, connections), ours in by_key.items():
        if server != "ours":
            continue
        cell = {name: by_key.get((model, name, rows, connections)) for name in ("mlflow", "ours_v2")}
        cell["mlserver"] = best_mlserver(results, model, rows, connections)
        load = max(r["load"] for r in [ours, *cell.values()] if r)
        print(
            f"{model:<18} {rows:>4} {connections:>4} | {side(ours, 9)} | {side(cell['mlflow'], 10)} | "
            f"{ratio(ours, cell['mlflow'])} | {side(cell['ours_v2'], 9)} | {side(cell['mlserver'], 9)} | "
            f"{ratio(cell['ours_v2'], cell['mlserver'])} | {ours['raw_ms']:>6.2f} | {load:>5.2f}"
            + (f" | mlserver config {cell['mlserver']['server'][len('mlserver') :]}" if cell["mlserver"] else "")
        )
    print("connections per server process, at more than one connection (MLflow: each attempt, the fastest kept):")
    for r in results:
        if r["connections"] > 1 and r["server"] in ("ours", "mlflow"):
            attempts = ", ".join(f"{rps:.0f} req/s {split}" for rps, split in r["attempts"])
            print(f"  {r['model']:<18} {r['rows']:>4} rows {r['server']:<7} {attempts}")
    failed = [r for r in results if r["errors"]]
    for r in failed:
        print(f"errors: {r['server']} {r['model']} {r['rows']} rows {r['connections']} connections: {r['errors']}")
    if why_no_mlflow:
        print(f"MLflow not measured: {why_no_mlflow}")
    if why_no_mlserver:
        print(f"MLServer not measured: {why_no_mlserver}")
    else:
        print(
            "mlserver: the faster of its configs in each cell, "
            + ", ".join(f"config {index}: {json.dumps(config)}" for index, config in enumerate(MLSERVER_CONFIGS))
        )
    print(f"prediction events received by the sink: {events}")


def print_batch_table(batches: list[dict]) -> None:
    print()
    print(
        f"Our server, xgboost_200, one {V2_BATCH_ROWS}-row batch on {V2_PATH}: V2 JSON against the binary tensor "
        "extension (binary in and out), same run, cell by cell"
    )
    header = (
        f"{'conn':>4} | {'json rps':>9} {'p50 ms':>7} {'cpu ms':>6} {'err':>4} {'bytes':>7} | "
        f"{'binary rps':>10} {'p50 ms':>7} {'cpu ms':>6} {'err':>4} {'bytes':>7} | {'x rps':>6} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(r["encoding"], r["connections"]): r for r in batches}
    for connections in CONCURRENCY:
        as_json, binary = by_key[("json", connections)], by_key[("binary", connections)]
        print(
            f"{connections:>4} | {as_json['rps']:>9.1f} {as_json['p50']:>7.2f} {as_json['cpu_ms']:>6.2f} "
            f"{as_json['errors']:>4} {as_json['body_bytes']:>7} | {binary['rps']:>10.1f} {binary['p50']:>7.2f} "
            f"{binary['cpu_ms']:>6.2f} {binary['errors']:>4} "
            f"{binary['body_bytes']:>7} | {binary['rps'] / max(as_json['rps'], 1e-9):>6.1f} | {binary['load']:>5.2f}"
        )


def test_serving_benchmark() -> None:
    results, batches = run_benchmark()
    assert all(r["errors"] == 0 for r in batches)
    by_key = {(r["model"], r["server"], r["rows"], r["connections"]): r for r in results}
    assert all(r["errors"] == 0 for r in results if r["server"] != "mlflow")
    xgb_1 = by_key[("xgboost_200", "ours", 1, 1)]
    assert xgb_1["p50"] < 3.0
    assert xgb_1["p50"] <= xgb_1["raw_ms"] + 1.5
    assert by_key[("xgboost_200", "ours", 1, 16)]["rps"] >= 650
    # The targets of issue 13 in every cell: 10x MLflow's req/s (at its best of MLFLOW_ATTEMPTS), 4x MLServer's
    # (its faster config), each on its own protocol.
    short = []
    for (model, server, rows, connections), ours in by_key.items():
        if server != "ours":
            continue
        mlflow = by_key.get((model, "mlflow", rows, connections))
        if mlflow and ours["rps"] < 10 * mlflow["rps"]:
            short.append(f"{model} {rows} rows {connections} conn: {ours['rps'] / mlflow['rps']:.1f}x MLflow")
        mlserver = best_mlserver(results, model, rows, connections)
        ours_v2 = by_key.get((model, "ours_v2", rows, connections))
        if mlserver and ours_v2 and ours_v2["rps"] < 4 * mlserver["rps"]:
            short.append(f"{model} {rows} rows {connections} conn: {ours_v2['rps'] / mlserver['rps']:.1f}x MLServer")
    assert not short, short


if __name__ == "__main__":
    run_benchmark()
