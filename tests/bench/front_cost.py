"""What our worker (its slow-client front, keep-alive and one send per response) changes in throughput: our
server with it and with gunicorn's own sync worker in its place, same run.

Run: `python tests/bench/front_cost.py` (wrk installed; BENCH_SECONDS per cell, BENCH_ROUNDS rounds).

"Without" is `python -m serving` whose workers are gunicorn's `SyncWorker` (a blocking read of each request once
accepted, `Connection: close` after each response, headers and body in two sends), as before the front existed;
the application, its models and its prediction log are the same. Both servers serve the XGBoost model of the
serving benchmark, with prediction logging on, and each cell measures them back to back, in alternating order
from one round to the next.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_serving_bench as bench  # noqa: E402

LAUNCH_WITHOUT_FRONT = """
import sys
import serving.server
from serving.__main__ import main

options = serving.server.gunicorn_options
serving.server.gunicorn_options = lambda **kwargs: {**options(**kwargs), "worker_class": "sync"}
sys.exit(main(sys.argv[1:]))
"""


def start(directory: Path, model: dict, sink_url: str, front: bool) -> tuple[subprocess.Popen, int]:
    if front:
        return bench.start_ours(directory, model, sink_url)
    launcher = directory / "without_front.py"
    launcher.write_text(LAUNCH_WITHOUT_FRONT)
    return bench.start_ours(directory, model, sink_url, program=(str(launcher),))


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    directory = Path(tempfile.mkdtemp(prefix="front-cost-"))
    model = bench.build_models(directory)["xgboost_200"]
    for rows in bench.BATCHES:
        (directory / f"payload-{rows}.json").write_bytes(bench.payload(rows))
    sink = ThreadingHTTPServer(("127.0.0.1", 0), bench._Sink)
    sink.daemon_threads = True
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    sink_url = f"http://127.0.0.1:{sink.server_address[1]}/ingest"
    servers = {"with": start(directory, model, sink_url, True), "without": start(directory, model, sink_url, False)}
    figures: dict[tuple[int, int, str], list[float]] = {}
    cpu: dict[tuple[int, int, str], list[float]] = {}
    try:
        for round_ in range(rounds):
            order = ["with", "without"] if round_ % 2 == 0 else ["without", "with"]
            for rows in bench.BATCHES:
                for connections in bench.CONCURRENCY:
                    for name in order:
                        process, port = servers[name]
                        body = directory / f"payload-{rows}.json"
                        measured = bench.measure(port, body, connections, session=process.pid)
                        assert measured["errors"] == 0, measured
                        figures.setdefault((rows, connections, name), []).append(measured["rps"])
                        cpu.setdefault((rows, connections, name), []).append(measured["cpu_ms"])
                    print(
                        f"round {round_ + 1} rows {rows:>2} conn {connections:>2}: "
                        f"with {figures[(rows, connections, 'with')][-1]:>6.0f} req/s "
                        f"{cpu[(rows, connections, 'with')][-1]:.3f} cpu ms, "
                        f"without {figures[(rows, connections, 'without')][-1]:>6.0f} req/s "
                        f"{cpu[(rows, connections, 'without')][-1]:.3f} cpu ms, load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            bench.stop(process)
        sink.shutdown()
    print(f"\nmedians of {rounds} rounds ({bench.MEASURE_SECONDS:.0f} s per cell, xgboost_200, /invocations):")
    for rows in bench.BATCHES:
        for connections in bench.CONCURRENCY:
            with_front = statistics.median(figures[(rows, connections, "with")])
            without = statistics.median(figures[(rows, connections, "without")])
            cpu_with = statistics.median(cpu[(rows, connections, "with")])
            cpu_without = statistics.median(cpu[(rows, connections, "without")])
            print(
                f"rows {rows:>2} conn {connections:>2}: our worker {with_front:>6.0f}, gunicorn's SyncWorker "
                f"{without:>6.0f} "
                f"req/s ({(with_front / without - 1) * 100:+.1f}%); CPU per request {cpu_with:.3f} against "
                f"{cpu_without:.3f} ms ({(cpu_with / cpu_without - 1) * 100:+.1f}%)"
            )


if __name__ == "__main__":
    main()
