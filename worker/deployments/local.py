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
model: no request fails during a blue-green switch or a canary step.
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
from pathlib import Path
from typing import Any

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
    """Write beside the target, then rename over it: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.python = python
        self.serving_root = Path(serving_root)
        self.ready_timeout = ready_timeout
        self.threads = threads

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

    def _start(self, desired: DeploymentSpec, index: int, port: int, service_port: int) -> dict[str, Any]:
        folder = self._folder(desired.name)
        spec_path = folder / "spec.json"
        pid_file = folder / f"replica-{index}.pid"
        pid_file.unlink(missing_ok=True)
        command = [self.python, "-m", "serving", "--spec", str(spec_path), "--host", self.host]
        command += ["--port", str(port), "--service-port", str(service_port)]
        command += ["--workers", str(desired.workers), "--pid-file", str(pid_file)]
        command += ["--threads", str(self.threads)]
        env = {**os.environ, "PYTHONPATH": str(self.serving_root)}
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

    def apply(self, desired: DeploymentSpec) -> ObservedState:
        folder = self._folder(desired.name)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / "desired.json", json.dumps(desired.to_dict(), default=str))
        spec_path = folder / "spec.json"
        spec_text = json.dumps(desired.server_spec(), indent=2, default=str)
        if not spec_path.exists() or spec_path.read_text() != spec_text:
            write_atomically(spec_path, spec_text)
        wanted_hash = desired.serving_hash()
        service_port = self._service_port(desired.name)
        records = self._records(desired.name)
        started: dict[int, dict[str, Any]] = {}
        reloading: dict[int, int] = {}  # replica -> log size before the SIGHUP

        for index in range(desired.replicas):
            record = records.get(index)
            alive = self._alive(desired.name, record)
            if alive and (record["workers"] != desired.workers or record.get("service_port") != service_port):
                # The worker count and the service port are command-line options: they need a restart.
                self._stop(desired.name, index, record)
                alive = False
            if alive and record["serving_hash"] != wanted_hash:
                reloading[index] = self._log_size(desired.name, index)
                os.kill(int(record["pid"]), signal.SIGHUP)
                logger.info("reloading model server %s-%s with a new spec", desired.name, index)
            elif not alive:
                if record:
                    logger.warning("model server %s-%s is not running; restarting it", desired.name, index)
                    self._kill_leftovers(desired.name, record)
                started[index] = self._start(desired, index, self._port_for(record), service_port)

        for index, record in records.items():
            if index >= desired.replicas:
                self._stop(desired.name, index, record)

        self._wait(desired, started, reloading)
        return self.observe(desired.name)

    def _wait(self, desired: DeploymentSpec, started: dict[int, dict], reloading: dict[int, int]) -> None:
        """Wait until new and reloaded replicas serve the desired split, or fail with the server's reason."""
        pending = set(started) | set(reloading)
        wanted_shadow = str(desired.shadow.version_id) if desired.shadow else None
        deadline = time.monotonic() + self.ready_timeout
        problems: list[str] = []
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
        if problems:
            raise BackendError("; ".join(problems)[-LOG_TAIL_BYTES:])

    def observe(self, name: str) -> ObservedState:
        replicas = []
        for index, record in sorted(self._records(name).items()):
            replica = f"{name}-{index}"
            port = int(record.get("port") or 0)
            if not self._alive(name, record):
                replicas.append(
                    ReplicaState(replica, self.host, port, ReplicaHealth.DEAD, pid=record.get("pid"), detail="exited")
                )
                continue
            ready, traffic, shadow, detail = probe_server(self.host, port, name)
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
