"""`python -m serving --spec spec.json --port 8080`: run a model server (see docs/model-server.md).

`python -m serving --check --spec spec.json` loads every model of a spec and exits 0, or 1 with the reason:
the master runs it before a graceful reload, and a deployment backend can run it before starting a server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from serving.spec import SpecError, load_spec, verify_artifacts

EXIT_BAD_SPEC = 2
# Numeric libraries read these when they are first imported (in the workers, after this sets them).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve the model versions of a spec.")
    parser.add_argument("--spec", required=True, help="path of the deployment spec (JSON)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--service-port",
        type=int,
        help="also listen on this port with SO_REUSEPORT, shared with the other replicas of the deployment: "
        "the kernel spreads the connections across every process listening on it",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="request threads per worker (default 1: sync workers)")
    parser.add_argument(
        "--model-threads",
        type=int,
        default=1,
        help="threads a model may use for one prediction (OMP_NUM_THREADS; default 1: workers run in parallel)",
    )
    parser.add_argument("--pid-file", help="write the master's pid here (send it SIGHUP to reload the spec)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds before a stuck worker is restarted")
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a client may take to send its whole request before it is answered 408 (default 30)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--check", action="store_true", help="load every model of the spec, then exit")
    args = parser.parse_args(argv)
    for name in ("port", "workers", "threads", "model_threads", "timeout", "read_timeout"):
        if getattr(args, name) < (0 if name == "port" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.service_port is not None and (not 0 < args.service_port < 65536 or args.service_port == args.port):
        parser.error("--service-port must be a port number other than --port")
    return args


def check(spec_path: str) -> int:
    """Load every model of the spec in this process, as a worker would."""
    from serving.app import load_models

    try:
        load_models(load_spec(spec_path))
    except Exception as exc:  # any failure to load is the answer of the check
        sys.stderr.write(f"spec {spec_path} cannot be served: {exc}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
    )
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(args.model_threads)
    if args.check:
        return check(args.spec)
    try:
        spec = load_spec(args.spec)
        verify_artifacts(spec)
    except SpecError as exc:
        sys.stderr.write(f"model server not started: {exc}\n")
        return EXIT_BAD_SPEC

    from serving.server import ModelServerApplication, gunicorn_options, listening_sockets

    try:
        descriptors = listening_sockets(args.host, args.port, args.service_port)
    except OSError as exc:
        sys.stderr.write(f"model server not started: {exc.strerror}\n")
        return EXIT_BAD_SPEC
    run_dir = Path(tempfile.mkdtemp(prefix="model-server-"))
    options = gunicorn_options(
        descriptors=descriptors,
        workers=args.workers,
        threads=args.threads,
        pid_file=os.path.abspath(args.pid_file) if args.pid_file else None,
        timeout=args.timeout,
        log_level=args.log_level,
        proc_name=f"model-server:{spec.name}",
    )
    ModelServerApplication(os.path.abspath(args.spec), run_dir, options, read_timeout=args.read_timeout).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
