"""Model server benchmark: our server against `mlflow models serve`, same models, payloads and worker count.

Run: `make bench`, or without Django:
    pytest -p no:django --confcutdir=tests/bench tests/bench/test_serving_bench.py -s
or as a script: `python tests/bench/test_serving_bench.py`.

MLflow lives only in a separate virtualenv (never in requirements.txt). Create it once with
    python3 -m venv /work/bench-venv && /work/bench-venv/bin/pip install mlflow scikit-learn==1.9.1 xgboost==3.2.0
(or point BENCH_MLFLOW_VENV elsewhere). Without it, only our server is measured and the table says why.

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
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving.bundle import save_bundle  # noqa: E402
from serving.signature import infer_signature  # noqa: E402

pytestmark = pytest.mark.bench

MLFLOW_VENV = Path(os.environ.get("BENCH_MLFLOW_VENV", "/work/bench-venv"))
WORKERS = 2
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
        _Sink.events += len(json.loads(body)["events"])
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


def start_ours(directory: Path, model: dict, sink_url: str) -> tuple[subprocess.Popen, int]:
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
    command = [sys.executable, "-m", "serving", "--spec", str(spec_path), "--port", str(port)]
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


def run_wrk(
    port: int, body_path: Path, connections: int, path: str = "/invocations", headers: dict[str, str] | None = None
) -> dict:
    script = body_path.with_suffix(".lua")
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in {"Content-Type": JSON, **(headers or {})}.items())
    script.write_text(WRK_SCRIPT % (lines, body_path))
    command = [str(WRK), "-t", "1" if connections == 1 else "2", "-c", str(connections), "-s", str(script)]
    url = f"http://127.0.0.1:{port}{path}"
    subprocess.run([*command, "-d", f"{max(1, round(WARMUP_SECONDS))}s", url], capture_output=True, check=True)
    result = subprocess.run(
        [*command, "-d", f"{max(1, round(MEASURE_SECONDS))}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH "))
    requests, duration_us, p50_us, p99_us, errors = (int(value) for value in line.split()[1:])
    return {"rps": requests / (duration_us / 1e6), "p50": p50_us / 1000, "p99": p99_us / 1000, "errors": errors}


def http_request(port: int, body: bytes, path: str = "/invocations", headers: dict[str, str] | None = None) -> bytes:
    fields = {"Host": f"127.0.0.1:{port}", "Content-Type": JSON, **(headers or {}), "Content-Length": str(len(body))}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + body


def measure(
    port: int, body_path: Path, connections: int, path: str = "/invocations", headers: dict | None = None
) -> dict:
    if LOAD_GENERATOR == "wrk":
        return run_wrk(port, body_path, connections, path, headers)
    return run_load(port, http_request(port, body_path.read_bytes(), path, headers), connections)


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


def run_v2_batches(port: int, directory: Path) -> list[dict]:
    """req/s of a 1,000-row batch on our V2 endpoint, JSON and binary, alternating cell by cell."""
    bodies = v2_bodies(V2_BATCH_ROWS)
    answers = [v2_probabilities(port, body, headers) for body, headers in bodies.values()]
    np.testing.assert_array_equal(answers[0], answers[1])
    results = []
    for connections in CONCURRENCY:
        for encoding, (body, headers) in bodies.items():
            body_path = directory / f"v2-{encoding}-{V2_BATCH_ROWS}.body"
            body_path.write_bytes(body)
            measured = measure(port, body_path, connections, V2_PATH, headers)
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
        starts = [("ours", lambda model=model: start_ours(directory, model, sink_url))]
        if why_no_mlflow is None:
            starts.append(("mlflow", lambda name=name: start_mlflow(directory, name)))
        servers: list[tuple[str, subprocess.Popen, int]] = []
        try:
            for server_name, start in starts:
                servers.append((server_name, *start()))
            # Cell by cell, each server in turn (an idle server costs nothing): when other jobs load the
            # machine, both sides of a comparison are measured minutes apart at most, not a whole model apart.
            for rows in BATCHES:
                body_path = directory / f"payload-{rows}.json"
                for connections in CONCURRENCY:
                    for server_name, _, port in servers:
                        measured = measure(port, body_path, connections)
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
                batches = run_v2_batches(servers[0][2], directory)
        finally:
            for _, process, _ in servers:
                stop(process)
    sink.shutdown()
    print_table(results, why_no_mlflow, _Sink.events, load_at_start)
    print_batch_table(batches)
    return results, batches


def print_table(results: list[dict], why_no_mlflow: str | None, events: int, load_at_start: tuple[float, ...]) -> None:
    print()
    print(f"Model server benchmark: {WORKERS} server processes each, {MEASURE_SECONDS:.0f} s per cell, logging on")
    if LOAD_GENERATOR == "wrk":
        print(f"load generator: {WRK}")
    elif WRK is None:
        print("load generator: Python (wrk is not installed: `apt-get install wrk` for a generator taking less CPU)")
    else:
        print("load generator: Python (BENCH_LOAD=python)")
    # Other jobs on the machine take CPU from both servers: the load average says how busy it was (the table's
    # last column: the 1-minute load average after our server's cell).
    print(
        "load average (1, 5, 15 min) at the start / at the end: "
        + " / ".join(" ".join(f"{value:.2f}" for value in sample) for sample in (load_at_start, os.getloadavg()))
    )
    header = (
        f"{'model':<18} {'rows':>4} {'conn':>4} | {'ours rps':>9} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'err':>4} | {'mlflow rps':>10} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
        f"{'x rps':>6} | {'raw ms':>6} {'p50-raw':>7} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(r["model"], r["server"], r["rows"], r["connections"]): r for r in results}
    for (model, server, rows, connections), ours in by_key.items():
        if server != "ours":
            continue
        theirs = by_key.get((model, "mlflow", rows, connections))
        line = (
            f"{model:<18} {rows:>4} {connections:>4} | {ours['rps']:>9.0f} {ours['rps'] * rows:>9.0f} "
            f"{ours['p50']:>7.2f} {ours['p99']:>7.2f} {ours['errors']:>4} | "
        )
        if theirs:
            line += (
                f"{theirs['rps']:>10.0f} {theirs['rps'] * rows:>9.0f} {theirs['p50']:>7.2f} {theirs['p99']:>7.2f} "
                f"{theirs['errors']:>4} | {ours['rps'] / max(theirs['rps'], 1e-9):>6.1f} | "
            )
        else:
            line += f"{'-':>10} {'-':>9} {'-':>7} {'-':>7} {'-':>4} | {'-':>6} | "
        line += f"{ours['raw_ms']:>6.2f} {ours['p50'] - ours['raw_ms']:>7.2f} | {ours['load']:>5.2f}"
        print(line)
    if why_no_mlflow:
        print(f"MLflow not measured: {why_no_mlflow}")
    print(f"prediction events received by the sink: {events}")


def print_batch_table(batches: list[dict]) -> None:
    print()
    print(
        f"Our server, xgboost_200, one {V2_BATCH_ROWS}-row batch on {V2_PATH}: V2 JSON against the binary tensor "
        "extension (binary in and out), same run, cell by cell"
    )
    header = (
        f"{'conn':>4} | {'json rps':>9} {'p50 ms':>7} {'err':>4} {'bytes':>7} | "
        f"{'binary rps':>10} {'p50 ms':>7} {'err':>4} {'bytes':>7} | {'x rps':>6} | {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(r["encoding"], r["connections"]): r for r in batches}
    for connections in CONCURRENCY:
        as_json, binary = by_key[("json", connections)], by_key[("binary", connections)]
        print(
            f"{connections:>4} | {as_json['rps']:>9.1f} {as_json['p50']:>7.2f} {as_json['errors']:>4} "
            f"{as_json['body_bytes']:>7} | {binary['rps']:>10.1f} {binary['p50']:>7.2f} {binary['errors']:>4} "
            f"{binary['body_bytes']:>7} | {binary['rps'] / max(as_json['rps'], 1e-9):>6.1f} | {binary['load']:>5.2f}"
        )


def test_serving_benchmark() -> None:
    results, batches = run_benchmark()
    assert all(r["errors"] == 0 for r in batches)
    by_key = {(r["model"], r["server"], r["rows"], r["connections"]): r for r in results}
    assert all(r["errors"] == 0 for r in results if r["server"] == "ours")
    xgb_1 = by_key[("xgboost_200", "ours", 1, 1)]
    assert xgb_1["p50"] < 3.0
    assert xgb_1["p50"] <= xgb_1["raw_ms"] + 1.5
    assert by_key[("xgboost_200", "ours", 1, 16)]["rps"] >= 650
    if ("xgboost_200", "mlflow", 1, 16) in by_key:
        assert by_key[("xgboost_200", "ours", 1, 16)]["rps"] >= 10 * by_key[("xgboost_200", "mlflow", 1, 16)]["rps"]
        assert (
            by_key[("random_forest_100", "ours", 1, 16)]["rps"]
            >= 3 * by_key[("random_forest_100", "mlflow", 1, 16)]["rps"]
        )


if __name__ == "__main__":
    run_benchmark()
