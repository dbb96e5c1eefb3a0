"""The local-process backend: model servers as supervised processes on loopback ports (the default).

Layout under the state folder, one folder per deployment:

    <state>/<name>/desired.json        the last applied DeploymentSpec (for `scale`)
    <state>/<name>/spec.json           the model server spec, shared by the replicas, rewritten atomically
    <state>/<name>/service.json        {"port"}: the deployment's endpoint, shared by every replica
    <state>/<name>/replica-<i>.json    {"pid", "port", "serving_hash", "workers", "started_at"}
    <state>/<name>/replica-<i>.pid     the gunicorn master's pid file
    <state>/<name>/replica-<i>.log     the server's output

The processes are started in their own session, so they outlive the Celery task (and worker) that started
them; a later worker finds them again through the replica files, and trusts a pid only when that process's
command line still names this deployment's spec file (pids get reused). A replica whose process died
(a crash, SIGKILL, an OOM kill) shows up as `dead` in `observe` and is restarted, on the same port when it
is free, by the next `apply` — the console's reconciler calls it every few seconds.

Clients use one address per deployment, the service port: every replica listens on it besides its own port,
with SO_REUSEPORT, and the kernel spreads new connections across the replicas' sockets (the model server
closes each connection after its answer, so that is per request). The service port is chosen once and kept,
so the endpoint survives restarts and scaling. The replicas' own ports are for the reconciler's health probes.
Two limits of kernel balancing, both documented in docs/deployments.md: a replica that is starting takes its
share of connections as soon as it listens, and they wait until its workers have loaded the models; a replica
stopped by a scale-down resets the few connections still queued on its socket, unless the host sets
`net.ipv4.tcp_migrate_req=1`, which hands them to the other replicas.

A change of the split, the versions or the shadow goes through the model server's graceful reload (rewrite
spec.json atomically, SIGHUP the master), which swaps workers only once the new ones have loaded every
model: no request fails during a blue-green switch or a canary step. When a replica refuses the new spec
(its models cannot load), spec.json and desired.json are put back as they were, so that a worker the master
respawns later, or a replica restarted after a crash, boots from the spec that is being served.

A replica that keeps dying is restarted with exponential backoff: at once after its first crash, then
after 10 s, 20 s, 40 s ... up to 5 minutes after each further one (`restart_backoff`, `restart_backoff_max`),
counted from when a crash was noticed; a replica that had run for 10 minutes before it died starts a new
count. The count and the time of the next restart are in the replica file and in `observe` (`restarts`,
`crash_loop`, `next_restart_at`), and an `apply` that has to wait raises a BackendError saying so.

Every file here is written 0600 (spec.json and desired.json hold the ingest token), and a model server gets
only the environment it needs (`server_environment`), not the console's secrets.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from serving.server import RELOAD_DONE, RELOAD_REFUSED
from worker.deployments.probe import probe_server
from worker.deployments.spec import (
    BackendError,
    DeploymentSpec,
    ObservedState,
    ReplicaHealth,
    ReplicaState,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 90.0
RESTART_BACKOFF_SECONDS = 10.0
RESTART_BACKOFF_MAX_SECONDS = 300.0
# A replica that ran this long before it died was not crash-looping: its next crash restarts it at once.
CRASH_LOOP_RESET_SECONDS = 600.0
# What a model server process inherits from the console's environment: the system's basics and the numeric
# libraries' thread settings. Nothing else (SECRET_KEY, DATABASE_URL, mail passwords ...) reaches it.
SERVER_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
SERVER_ENV_PREFIXES = ("OMP_", "OPENBLAS_", "MKL_")
STOP_TIMEOUT_SECONDS = 35.0
POLL_SECONDS = 0.1
LOG_TAIL_BYTES = 4000


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def write_atomically(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: a reader sees the old file or the new one, never half.

    The file is readable by its owner only (0600, whatever the umask): the specs hold the ingest token.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def server_environment(serving_root: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a model server process: an allow-list of the console's, plus its PYTHONPATH."""
    environ = os.environ if environ is None else environ
    kept = {
        name: value
        for name, value in environ.items()
        if name in SERVER_ENV_NAMES or name.startswith(SERVER_ENV_PREFIXES)
    }
    return {**kept, "PYTHONPATH": str(serving_root)}


def restart_delay(restarts: int, *, base: float, cap: float) -> float:
    """Seconds to wait, after a crash is noticed, before restart number `restarts + 1` of a replica."""
    return 0.0 if restarts == 0 else min(cap, base * 2 ** (restarts - 1))


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _process_group(pgid: int) -> list[int]:
    """Pids in process group `pgid` (the master started a session, so its workers share its group)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError, ValueError):
            # Field 5 of /proc/<pid>/stat is the process group; the command name before it may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def process_tree_usage(pid: int) -> tuple[float | None, int | None]:
    """CPU seconds (user + system) and resident bytes of a server: its master and every descendant (the
    workers). (None, None) when the master is gone; a worker that exits while being read is left out."""
    try:
        master = psutil.Process(pid)
        processes = [master, *master.children(recursive=True)]
    except psutil.Error:
        return None, None
    cpu_seconds, rss_bytes = 0.0, 0
    for process in processes:
        with suppress(psutil.Error):
            times = process.cpu_times()
            rss = process.memory_info().rss
            cpu_seconds += times.user + times.system
            rss_bytes += rss
    return cpu_seconds, rss_bytes


def _reap(pid: int) -> None:
    # A server this process started and that died stays a zombie until waited for.
    with suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class LocalProcessBackend:
    kind = "local"

    def __init__(
        self,
        *,
        state_dir: str | Path,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        serving_root: str | Path = REPO_ROOT,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        threads: int = 1,
        restart_backoff: float = RESTART_BACKOFF_SECONDS,
        restart_backoff_max: float = RESTART_BACKOFF_MAX_SECONDS,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.python = python
        self.serving_root = Path(serving_root)
        self.ready_timeout = ready_timeout
        self.threads = threads
        self.restart_backoff = restart_backoff
        self.restart_backoff_max = restart_backoff_max

    # ------------------------------------------------------------------ paths and records

    def _folder(self, name: str) -> Path:
        return self.state_dir / name

    def _record_path(self, name: str, index: int) -> Path:
        return self._folder(name) / f"replica-{index}.json"

    def _records(self, name: str) -> dict[int, dict[str, Any]]:
        records = {}
        for path in sorted(self._folder(name).glob("replica-*.json")):
            with suppress(OSError, ValueError):
                records[int(path.stem.split("-", 1)[1])] = json.loads(path.read_text())
        return records

    def _save_record(self, name: str, index: int, record: dict[str, Any]) -> None:
        write_atomically(self._record_path(name, index), json.dumps(record))

    def _known_service_port(self, name: str) -> int | None:
        with suppress(OSError, ValueError, KeyError):
            return int(json.loads((self._folder(name) / "service.json").read_text())["port"])
        return None

    def _service_port(self, name: str) -> int:
        """The deployment's service port, chosen (and kept) the first time it is needed."""
        port = self._known_service_port(name)
        if port is None:
            port = free_port(self.host)
            write_atomically(self._folder(name) / "service.json", json.dumps({"port": port}))
        return port

    def names(self) -> list[str]:
        """Deployments with a folder here: the ones a restarted worker adopts."""
        if not self.state_dir.exists():
            return []
        return sorted(p.name for p in self.state_dir.iterdir() if (p / "desired.json").exists())

    def _alive(self, name: str, record: dict[str, Any] | None) -> bool:
        if not record or not record.get("pid"):
            return False
        pid = int(record["pid"])
        _reap(pid)
        command = _cmdline(pid)
        spec_path = str(self._folder(name) / "spec.json")
        return "serving" in command and spec_path in command

    # ------------------------------------------------------------------ processes

    def _start(
        self, desired: DeploymentSpec, index: int, port: int, service_port: int, restarts: int = 0
    ) -> dict[str, Any]:
        folder = self._folder(desired.name)
        spec_path = folder / "spec.json"
        pid_file = folder / f"replica-{index}.pid"
        pid_file.unlink(missing_ok=True)
        command = [self.python, "-m", "serving", "--spec", str(spec_path), "--host", self.host]
        command += ["--port", str(port), "--service-port", str(service_port)]
        command += ["--workers", str(desired.workers), "--pid-file", str(pid_file)]
        command += ["--threads", str(self.threads)]
        env = server_environment(self.serving_root)
        with open(folder / f"replica-{index}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=self.serving_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        record = {
            "pid": process.pid,
            "port": port,
            "service_port": service_port,
            "serving_hash": desired.serving_hash(),
            "workers": desired.workers,
            "started_at": time.time(),
            "restarts": restarts,
        }
        self._save_record(desired.name, index, record)
        logger.info("started model server %s-%s (pid %s) on port %s", desired.name, index, process.pid, port)
        return record

    def _kill_leftovers(self, name: str, record: dict[str, Any]) -> None:
        """Workers orphaned by a killed master still hold the port; end them (only if they are ours)."""
        spec_path = str(self._folder(name) / "spec.json")
        pid = int(record.get("pid") or 0)
        if pid <= 1:
            return
        for member in _process_group(pid):
            if spec_path in _cmdline(member):
                with suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)

    def _stop(self, name: str, index: int, record: dict[str, Any]) -> None:
        if self._alive(name, record):
            pid = int(record["pid"])
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while self._alive(name, record) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
        self._kill_leftovers(name, record)
        self._record_path(name, index).unlink(missing_ok=True)
        (self._folder(name) / f"replica-{index}.pid").unlink(missing_ok=True)

    def _port_for(self, record: dict[str, Any] | None) -> int:
        # Restart on the same port when possible, so the replica's address survives a crash.
        if record and record.get("port"):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if port_is_free(self.host, int(record["port"])):
                    return int(record["port"])
                time.sleep(POLL_SECONDS)
        return free_port(self.host)

    def _log_tail(self, name: str, index: int) -> str:
        path = self._folder(name) / f"replica-{index}.log"
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_since(self, name: str, index: int, offset: int) -> str:
        with suppress(OSError), open(self._folder(name) / f"replica-{index}.log", "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
        return ""

    def _log_size(self, name: str, index: int) -> int:
        with suppress(OSError):
            return (self._folder(name) / f"replica-{index}.log").stat().st_size
        return 0

    # ------------------------------------------------------------------ the interface

    def _restart_plan(self, name: str, index: int, record: dict[str, Any]) -> tuple[int, float]:
        """For a replica found dead: the restart count its next start will have, and when that start is due."""
        if "died_at" not in record:
            record["died_at"] = time.time()
            self._save_record(name, index, record)
        ran = float(record["died_at"]) - float(record.get("started_at") or 0)
        restarts = 0 if ran >= CRASH_LOOP_RESET_SECONDS else int(record.get("restarts") or 0)
        delay = restart_delay(restarts, base=self.restart_backoff, cap=self.restart_backoff_max)
        return restarts + 1, float(record["died_at"]) + delay

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        folder = self._folder(desired.name)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        desired_path, spec_path = folder / "desired.json", folder / "spec.json"
        # Put back if a replica refuses the new spec: respawned workers and restarts must boot the served one.
        previous = {path: path.read_text() for path in (desired_path, spec_path) if path.exists()}
        write_atomically(desired_path, json.dumps(desired.to_dict(), default=str))
        spec_text = json.dumps(desired.server_spec(), indent=2, default=str)
        if previous.get(spec_path) != spec_text:
            write_atomically(spec_path, spec_text)
        wanted_hash = desired.serving_hash()
        service_port = self._service_port(desired.name)
        records = self._records(desired.name)
        started: dict[int, dict[str, Any]] = {}
        reloading: dict[int, int] = {}  # replica -> log size before the SIGHUP
        backing_off: list[str] = []

        for index in range(desired.replicas):
            record = records.get(index)
            alive = self._alive(desired.name, record)
            crashed = bool(record) and not alive
            if alive and (record["workers"] != desired.workers or record.get("service_port") != service_port):
                # The worker count and the service port are command-line options: they need a restart.
                self._stop(desired.name, index, record)
                alive = False
            if alive and record["serving_hash"] != wanted_hash:
                reloading[index] = self._log_size(desired.name, index)
                os.kill(int(record["pid"]), signal.SIGHUP)
                logger.info("reloading model server %s-%s with a new spec", desired.name, index)
            elif not alive:
                restarts = 0
                if crashed:
                    restarts, due = self._restart_plan(desired.name, index, record)
                    if due > time.time():
                        at = datetime.fromtimestamp(due, UTC).strftime("%H:%M:%S UTC")
                        backing_off.append(
                            f"replica {index} is in a crash loop ({restarts - 1} restarts); next at {at}"
                        )
                        continue
                    logger.warning("model server %s-%s is not running; restart %d", desired.name, index, restarts)
                    self._kill_leftovers(desired.name, record)
                started[index] = self._start(desired, index, self._port_for(record), service_port, restarts)

        for index, record in records.items():
            if index >= desired.replicas:
                self._stop(desired.name, index, record)

        problems, refused = self._wait(desired, started, reloading)
        if refused:
            for path, text in previous.items():
                write_atomically(path, text)
            problems.append("the previous spec was put back")
        problems += backing_off
        if problems:
            raise BackendError("; ".join(problems)[-LOG_TAIL_BYTES:])
        return self.observe(desired.name)

    def _wait(
        self, desired: DeploymentSpec, started: dict[int, dict], reloading: dict[int, int]
    ) -> tuple[list[str], bool]:
        """Wait until new and reloaded replicas serve the desired split; the problems, and whether a reload was
        refused."""
        pending = set(started) | set(reloading)
        wanted_shadow = str(desired.shadow.version_id) if desired.shadow else None
        deadline = time.monotonic() + self.ready_timeout
        problems: list[str] = []
        refused = False
        while pending and time.monotonic() < deadline:
            records = self._records(desired.name)
            for index in sorted(pending):
                record = records.get(index)
                if not self._alive(desired.name, record):
                    problems.append(f"replica {index} exited: {self._log_tail(desired.name, index)}")
                    pending.discard(index)
                    continue
                reload_log = self._log_since(desired.name, index, reloading[index]) if index in reloading else ""
                if RELOAD_REFUSED in reload_log:
                    problems.append(f"replica {index} refused the new spec: {self._log_tail(desired.name, index)}")
                    refused = True
                    pending.discard(index)
                    continue
                if index in reloading and RELOAD_DONE not in reload_log:
                    continue
                ready, traffic, shadow, _ = probe_server(self.host, int(record["port"]), desired.name)
                if ready and traffic == desired.traffic() and shadow == wanted_shadow:
                    record["serving_hash"] = desired.serving_hash()
                    self._save_record(desired.name, index, record)
                    pending.discard(index)
            if pending:
                time.sleep(POLL_SECONDS)
        problems += [f"replica {index} was not ready after {self.ready_timeout:.0f} s" for index in sorted(pending)]
        return problems, refused

    def observe(self, name: str) -> ObservedState:
        replicas = []
        for index, record in sorted(self._records(name).items()):
            replica = f"{name}-{index}"
            port = int(record.get("port") or 0)
            restarts = int(record.get("restarts") or 0)
            if not self._alive(name, record):
                died_at = float(record.get("died_at") or time.time())
                crash_loop = restarts > 0 and died_at - float(record.get("started_at") or 0) < CRASH_LOOP_RESET_SECONDS
                next_restart_at = None
                if "died_at" in record:
                    delay = restart_delay(
                        restarts if crash_loop else 0, base=self.restart_backoff, cap=self.restart_backoff_max
                    )
                    next_restart_at = died_at + delay
                replicas.append(
                    ReplicaState(
                        replica,
                        self.host,
                        port,
                        ReplicaHealth.DEAD,
                        pid=record.get("pid"),
                        detail=f"crash loop: {restarts} restarts" if crash_loop else "exited",
                        restarts=restarts,
                        crash_loop=crash_loop,
                        next_restart_at=next_restart_at,
                    )
                )
                continue
            ready, traffic, shadow, detail = probe_server(self.host, port, name)
            cpu_seconds, rss_bytes = process_tree_usage(int(record["pid"]))
            if ready:
                health = ReplicaHealth.READY
            elif time.time() - float(record.get("started_at") or 0) < self.ready_timeout:
                health = ReplicaHealth.STARTING
            else:
                health = ReplicaHealth.UNHEALTHY
            replicas.append(
                ReplicaState(
                    replica,
                    self.host,
                    port,
                    health,
                    pid=int(record["pid"]),
                    traffic=traffic,
                    shadow=shadow,
                    detail=detail,
                    restarts=restarts,
                    cpu_seconds=cpu_seconds,
                    rss_bytes=rss_bytes,
                )
            )
        service_port = self._known_service_port(name)
        endpoint = f"http://{self.host}:{service_port}" if service_port is not None else ""
        return ObservedState(name=name, replicas=tuple(replicas), endpoint=endpoint)

    def desired(self, name: str) -> DeploymentSpec | None:
        path = self._folder(name) / "desired.json"
        if not path.exists():
            return None
        return DeploymentSpec.from_dict(json.loads(path.read_text()))

    def scale(self, name: str, replicas: int) -> ObservedState:
        desired = self.desired(name)
        if desired is None:
            raise BackendError(f"deployment {name!r} was never applied here")
        return self.apply(desired.with_replicas(replicas))

    def delete(self, name: str) -> None:
        for index, record in self._records(name).items():
            self._stop(name, index, record)
        shutil.rmtree(self._folder(name), ignore_errors=True)

    def stop_all(self) -> list[str]:
        """Stop every model server under the state folder (the console's Ctrl-C); their folders stay."""
        stopped = []
        for name in self.names():
            for index, record in self._records(name).items():
                self._stop(name, index, record)
            stopped.append(name)
        return stopped
