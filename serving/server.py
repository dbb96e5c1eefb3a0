"""Running the model server under gunicorn: pre-forked worker processes sharing one listening socket.

The master process never loads a model (forking after numpy/xgboost start their thread pools is unsafe,
and a master that stays small restarts workers quickly). Each worker reads the spec file and loads every
model before it accepts a connection, so a worker that answers is ready.

Requests are served by `ModelServerWorker`, gunicorn's sync worker (one request at a time) with a front that
reads each request in full before the worker gives it its time: a client that sends its request slowly (or
never finishes it) waits among the other unfinished ones instead of holding the worker. Connections are kept
alive between requests, and each response goes out in one send (see the class).

Graceful reload (SIGHUP to the master) is gunicorn's, with two changes made by `ModelServerArbiter`:
- the new spec is first loaded in full by a separate check process; when it fails, the master logs why
  and keeps the current workers instead of replacing them with workers that cannot boot;
- old workers are stopped only once every new worker has loaded its models (gunicorn would stop them at
  once and leave requests waiting in the socket backlog for as long as loading takes).
The master logs the outcome as one of two lines, which the deployment backends wait for: RELOAD_REFUSED, or
RELOAD_DONE once every old worker has exited (until then an old worker may still take a connection).

Workers never read the spec file the deployment backend writes: they read the master's private copy of the
spec it accepted (at start, and at each reload whose check passed). A worker that dies and is respawned while
a new spec waits for its check, or after the check refused it, boots the spec that is being served, not one
that could not load (which would make gunicorn halt the whole server: a worker that fails to boot stops it).
"""

from __future__ import annotations

import gc
import io
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from gunicorn import SERVER, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http import wsgi
from gunicorn.workers.sync import SyncWorker

logger = logging.getLogger(__name__)

# How long the master waits for new workers to load their models before stopping the old ones anyway.
READY_TIMEOUT_SECONDS = 120.0
CHECK_TIMEOUT_SECONDS = 300.0
READY_POLL_SECONDS = 0.05
# How long a finished connection keeps reading what its client still sends (gunicorn's own figure), and how
# many such connections a worker keeps before closing the oldest.
LINGER_SECONDS = 2.0
MAX_LINGERING = 256
# How long a client may take to send its whole request before it is answered 408 and closed (the default of
# --read-timeout); how many such unfinished requests one worker holds (more wait in the listen backlog); how
# much of a body is read before the request is served (the rest of a larger body is read by the application,
# each read bounded by the timeout).
READ_TIMEOUT_SECONDS = 30.0
MAX_PENDING = 512
PREREAD_BYTES = 1 << 20
# A stopping worker still reads the requests it accepted for this long (they are normally whole within
# milliseconds; a slow client is not waited for through the whole graceful timeout).
DRAIN_SECONDS = 5.0
# Kept-alive connections a worker holds at most, waiting for their next request (the rest of MAX_PENDING
# stays for new connections); past it a response says `Connection: close`. A stopping worker closes a kept
# connection once it has been idle this long: a client that is sending its next request right after a
# response gets it served (with `Connection: close`) instead of finding the connection gone.
MAX_KEPT = 256
DRAIN_IDLE_SECONDS = 1.0
# After accepting, a worker waits this long per connection it holds (up to the maximum) before it accepts
# again: a kept connection stays with the worker that accepted it, and every idle worker is woken for a new
# one, so the worker holding fewer takes it. Without the wait, the worker that happened to run first took all
# 16 connections of a benchmark run, or of 16 clients connecting at once, and the other sat idle.
ACCEPT_PAUSE_PER_CONNECTION = 0.0001
ACCEPT_PAUSE_MAX = 0.005
# Headers longer than this are handed to gunicorn's parser as they are (it refuses them with its own 400).
_HEADER_LIMIT = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
# The requests the front parses itself (`simple_request`): GET or POST of an origin-form target with no
# percent-encoding and no fragment, in HTTP/1.1, with header names that are tokens without "_" and values of
# visible ASCII, spaces and tabs. Anything else goes to gunicorn's parser.
_SIMPLE_LINE = re.compile(rb"(GET|POST) (/[^\x00-\x20\x7f-\xff%#]*) HTTP/1\.1")
_SIMPLE_FIELD = re.compile(rb"([!#$%&'*+.^`|~0-9A-Za-z-]+):[ \t]*([\t -~]*)")
# Headers whose handling (framing, expectations, protocol changes) is left to gunicorn's parser.
_NOT_SIMPLE = frozenset({"HTTP_TRANSFER_ENCODING", "HTTP_EXPECT", "HTTP_UPGRADE", "HTTP_TE"})
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# Containers allocated and not yet freed before the collector runs in a worker (see `settle_collector`).
GC_THRESHOLD = 50_000
RELOAD_REFUSED = "Not reloading"
RELOAD_DONE = "Reloaded"


def ready_marker(run_dir: Path, pid: int) -> Path:
    return run_dir / "ready" / str(pid)


def copy_privately(source: str | Path, target: Path) -> None:
    """Copy atomically (a booting worker never reads half a file), readable by this user only (it holds the
    ingest token)."""
    data = Path(source).read_bytes()
    partial = target.with_name(target.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(partial, target)


def check_spec_in_subprocess(spec_path: str | Path) -> str | None:
    """Load every model of the spec in a fresh process; None when it works, else the reason it does not."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "serving", "--check", "--spec", str(spec_path)],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"loading the spec's models took more than {CHECK_TIMEOUT_SECONDS:.0f} s"
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"the check exited with code {result.returncode}"


class ModelServerArbiter(Arbiter):
    def reload(self) -> None:
        # The check reads a copy: the backend may rewrite (or put back) its file meanwhile.
        candidate = self.app.run_dir / "candidate-spec.json"
        try:
            copy_privately(self.app.spec_path, candidate)
            error = check_spec_in_subprocess(candidate)
        except OSError as exc:
            error = f"cannot read the spec file: {exc}"
        if error is not None:
            candidate.unlink(missing_ok=True)
            self.log.error(
                "%s: the new spec cannot be served (%s); the current workers keep serving", RELOAD_REFUSED, error
            )
            return
        # From here on, new workers (and any respawned one) boot the new spec.
        os.replace(candidate, self.app.served_spec_path)
        self.log.info("Reloading: the new spec loads; starting new workers")
        old = set(self.WORKERS)
        # gunicorn's reload waits up to graceful_timeout for the old workers to finish their requests.
        super().reload()
        lingering = old & set(self.WORKERS)
        for pid in lingering:
            self.log.warning("Old worker %s still runs after the graceful timeout; killing it", pid)
            self.kill_worker(pid, signal.SIGKILL)
        while old & set(self.WORKERS):
            self.reap_workers()
            time.sleep(READY_POLL_SECONDS)
        self.log.info("%s: every worker serves the new spec", RELOAD_DONE)

    def manage_workers(self) -> None:
        if len(self.WORKERS) > self.num_workers:
            self._wait_for_newest_workers()
        super().manage_workers()

    def _wait_for_newest_workers(self) -> None:
        newest = [pid for pid, _ in sorted(self.WORKERS.items(), key=lambda item: item[1].age)[-self.num_workers :]]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if all(ready_marker(self.app.run_dir, pid).exists() for pid in newest):
                return
            # A new worker that dies while booting is reaped here (gunicorn then halts, as at first start).
            self.reap_workers()
            if any(pid not in self.WORKERS for pid in newest):
                return
            time.sleep(READY_POLL_SECONDS)
        self.log.warning("New workers were not ready after %.0f s; stopping the old ones anyway", READY_TIMEOUT_SECONDS)


def request_complete(data: bytes, body_limit: int | None = None) -> bool:
    """Whether `data` holds a whole request to serve: its headers and its body (up to PREREAD_BYTES of it).

    A client that asks for `100-continue` sends its body only when told to, so its request is served at its
    headers; so is anything the parser or the application will refuse without reading the body (headers too
    long, a malformed length, a length above `body_limit`: answered 413 at once).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) >= _HEADER_LIMIT
    head = data[:end].lower()
    if b"\r\nexpect:" in head:
        return True
    if b"\r\ntransfer-encoding:" in head:
        return data.endswith(b"0\r\n\r\n") or len(data) - end - 4 >= PREREAD_BYTES
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return True
    length = int(match.group(1))
    return (body_limit is not None and length > body_limit) or len(data) - end - 4 >= min(length, PREREAD_BYTES)


def request_length(data: bytes) -> int | None:
    """The length in bytes of the request `data` starts with (headers and body), when its headers say it.

    None for a chunked body (its end is found only by parsing it) and for headers that are not whole.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].lower()
    if b"\r\ntransfer-encoding:" in head:
        return None
    match = _CONTENT_LENGTH.search(head)
    return end + 4 + (int(match.group(1)) if match else 0)


class SimpleRequest(NamedTuple):
    method: str
    path: str
    query: str
    headers: dict[str, str]  # as WSGI environ keys: HTTP_*, CONTENT_TYPE, CONTENT_LENGTH
    body_start: int
    end: int  # where the request ends in the bytes read (a pipelined next request may follow)


def simple_request(data: bytes, limits: Any) -> SimpleRequest | None:
    """The request `data` starts with, when it is whole and simple enough to serve without gunicorn's parser.

    gunicorn's parser took ~70 µs a request (with its environ), ~13 % of a 32-row XGBoost prediction's whole
    cost in the worker; this takes ~5 µs. It accepts only a strict subset of HTTP/1.1 (see `_SIMPLE_LINE` and
    `_SIMPLE_FIELD`): no repeated header, no `Transfer-Encoding`, `Expect` or `Upgrade`, `Connection` only as
    `keep-alive`, a `Content-Length` of digits (required for a POST), within gunicorn's limits (`limits`: its
    config), body all read. Everything else, malformed requests included, is None: gunicorn's parser serves or
    refuses it as before.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].split(b"\r\n")
    line = _SIMPLE_LINE.fullmatch(lines[0])
    if line is None or len(lines[0]) > limits.limit_request_line or len(lines) > limits.limit_request_fields:
        return None
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        field = _SIMPLE_FIELD.fullmatch(raw)
        if field is None or len(raw) > limits.limit_request_field_size:
            return None
        name = field[1].upper().replace(b"-", b"_").decode()
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + name
        value = field[2].rstrip(b" \t").decode()
        if key in headers or key in _NOT_SIMPLE or (key == "HTTP_CONNECTION" and value.lower() != "keep-alive"):
            return None
        headers[key] = value
    method = line[1].decode()
    length = headers.get("CONTENT_LENGTH")
    if (length is None and method == "POST") or (length is not None and not length.isdigit()):
        return None
    end = head_end + 4 + int(length or 0)
    if len(data) < end:
        return None
    path, _, query = line[2].decode().partition("?")
    return SimpleRequest(method, path, query, headers, head_end + 4, end)


class _PrereadSocket(socket.socket):
    """A connection whose first bytes the worker's front already read: `recv` returns those first.

    With the request's length known, reads stop at its end (the connection then reads as closed), so that the
    parser never takes the next request's bytes; `leftover` holds those the front read already (a client that
    pipelines requests) and `whole_request_read` says whether every byte of this one left the kernel's buffer.
    """

    def __init__(self, connection: socket.socket, data: bytes, length: int | None) -> None:
        super().__init__(connection.family, connection.type, connection.proto, fileno=connection.detach())
        self._prefix = memoryview(data if length is None else data[:length])
        self.leftover = b"" if length is None else data[length:]
        self._unread = None if length is None else max(0, length - len(data))

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return bytes(chunk)
        if self._unread is None:
            return super().recv(size, flags)
        if not self._unread:
            return b""
        chunk = super().recv(min(size, self._unread), flags)
        self._unread -= len(chunk)
        return chunk

    def whole_request_read(self) -> bool:
        return self._unread == 0


class _Unfinished:
    """A connection whose request is still arriving (or, once kept alive, has not started to)."""

    __slots__ = ("connection", "address", "listener", "data", "deadline", "kept", "idle_since")

    def __init__(self, connection: socket.socket, address: Any, listener: Any, data: bytes) -> None:
        self.connection, self.address, self.listener, self.data = connection, address, listener, data
        self.deadline = 0.0
        self.kept = False
        self.idle_since = 0.0


class ModelServerWorker(SyncWorker):
    """gunicorn's sync worker (one request at a time), with a front that reads requests without blocking,
    connections kept alive, and each response written in one send.

    The front. gunicorn's sync worker reads a request with blocking reads once it accepted the connection, so a
    client that sends a byte at a time (or stops half way) holds the worker until the arbiter kills it: two such
    clients stop a two-worker server. Here a connection is accepted and read without blocking; a request that
    arrived whole (nearly all of them: one read) is served at once, an unfinished one waits in a selector with
    the others, each read as its bytes come, until it is whole (then served) or its read timeout is up (then
    answered 408 and closed). The worker never waits on one client.

    Keep-alive. gunicorn's sync worker closes every connection after its response, so each request also paid for
    a TCP connect, an accept and a close. Here a connection whose request was read to its end (its length known
    from Content-Length) goes back to the selector after the response, to wait for its next request among the
    unfinished ones (up to the `keepalive` setting idle, then closed). It is closed instead (`Connection: close`)
    when the client asks, when the request's end is unknown (a chunked body) or was not read (a refused body),
    past MAX_KEPT, and when the worker is stopping; a stopping worker also closes its idle kept connections once
    each has been idle DRAIN_IDLE_SECONDS. Since a kept connection stays with one worker, workers take new ones
    one at a time, the worker holding more waiting longer before its next (ACCEPT_PAUSE_PER_CONNECTION).

    One send. gunicorn writes the headers and the body of a response in two sends: two segments, and two wakeups
    of the client. The application's response (one body chunk, with its Content-Length) goes out in one.

    Closing. After its last response gunicorn half-closes a connection, then blocks reading until the client
    closes too, for up to 2 s (RFC 9112 section 9.6: closing with unread client bytes would send a reset that can
    destroy the response before the client reads it); a client that keeps its end open would stall the worker.
    Here the connection is half-closed the same way, then kept open and read without blocking before each new
    request is served, and closed once its client has closed (or after LINGER_SECONDS).

    This worker runs only `serving.app.ModelServer`, with no access log and no request hooks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        self._selector: selectors.BaseSelector | None = None
        self._unfinished: dict[int, _Unfinished] = {}
        # Kept connections whose next request had arrived whole with the previous one (pipelined).
        self._ready: list[_Unfinished] = []
        self._accepting = False
        self._accept_at = 0.0
        self._date_second, self._date_text = 0, ""
        self._body_limit: int | None = None
        # What every request's WSGI environ holds on the simple path (see `_serve_simple`).
        self._environ: dict[str, Any] = {}
        self._listener_environ: dict[Any, dict[str, str]] = {}

    def run(self) -> None:
        for listener in self.sockets:
            listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, "pipe")
        spec = getattr(self.wsgi, "spec", None)
        self._body_limit = getattr(spec, "max_body_bytes", None)
        self._environ = {**wsgi.base_environ(self.cfg), "SCRIPT_NAME": "", "SERVER_PROTOCOL": "HTTP/1.1"}
        for listener in self.sockets:
            host, port = listener.getsockname()[:2]
            self._listener_environ[listener] = {"SERVER_NAME": host, "SERVER_PORT": str(port)}
        drain_until: float | None = None
        while True:
            self._listen(
                self.alive and len(self._unfinished) < MAX_PENDING and time.monotonic() >= self._accept_at
            )  # when full, new connections wait in the listen backlog
            if not self.alive:
                # Stopping (a reload, SIGTERM): accept no more, finish what was accepted within the grace period.
                if drain_until is None:
                    drain_until = time.monotonic() + min(self.cfg.graceful_timeout, DRAIN_SECONDS)
                self._close_idle_kept()
                if not (self._unfinished or self._ready) or time.monotonic() >= drain_until:
                    break
            self.notify()
            whole, self._ready = self._ready, []
            listeners = []
            for key, _ in self._selector.select(0.0 if whole else self._select_timeout()):
                if key.data == "pipe":
                    try:
                        os.read(self.PIPE[0], 1)
                    except BlockingIOError:
                        pass
                elif key.data is None:
                    listeners.append(key.fileobj)
                else:
                    self._read(key.data, whole)
            if listeners:
                self._accept_from(listeners[0], whole)
                held = len(self._unfinished) + len(whole)
                self._accept_at = time.monotonic() + min(ACCEPT_PAUSE_MAX, held * ACCEPT_PAUSE_PER_CONNECTION)
            self._expire()
            for request in whole:
                self._serve(request)
            if not self.is_parent_alive():
                break
        for request in [*self._unfinished.values(), *self._ready]:
            self._forget(request)
            request.connection.close()

    def _select_timeout(self) -> float:
        # At least once a second: the arbiter needs the heartbeat (notify) and deadlines need checking; a
        # stopping worker checks its idle kept connections more often.
        ceiling = 1.0 if self.alive else 0.1
        pause = self._accept_at - time.monotonic()
        if self.alive and pause > 0:  # accepting again after the pause (not when it stopped for being full)
            ceiling = min(ceiling, pause)
        if self._unfinished:
            ceiling = min(ceiling, min(request.deadline for request in self._unfinished.values()) - time.monotonic())
        return max(0.0, ceiling)

    def _listen(self, on: bool) -> None:
        if on == self._accepting or self._selector is None:
            return
        for listener in self.sockets:
            if on:
                self._selector.register(listener, selectors.EVENT_READ, None)
            else:
                self._selector.unregister(listener)
        self._accepting = on

    def _accept_from(self, listener: Any, whole: list[_Unfinished]) -> None:
        try:
            connection, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        connection.setblocking(False)
        util.close_on_exec(connection)
        request = _Unfinished(connection, address, listener, b"")
        request.deadline = time.monotonic() + self.app.read_timeout
        if self._read(request, whole, registered=False):
            self._register(request)

    def _register(self, request: _Unfinished) -> None:
        self._unfinished[request.connection.fileno()] = request
        self._selector.register(request.connection, selectors.EVENT_READ, request)

    def _read(self, request: _Unfinished, whole: list[_Unfinished], registered: bool = True) -> bool:
        """Read what has arrived; True while the request is still unfinished."""
        try:
            chunk = request.connection.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            chunk = b""
        if not chunk:  # the client went away before its request was whole (or closed its kept connection)
            if registered:
                self._forget(request)
            request.connection.close()
            return False
        if not request.data and request.kept:
            # A kept connection's next request has the read timeout from its first byte, like a new one's.
            request.deadline = time.monotonic() + self.app.read_timeout
        request.data += chunk
        if not request_complete(request.data, self._body_limit):
            return True
        if registered:
            self._forget(request)
        whole.append(request)
        return False

    def _forget(self, request: _Unfinished) -> None:
        if self._unfinished.pop(request.connection.fileno(), None) is None:
            return
        self._selector.unregister(request.connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for request in [r for r in self._unfinished.values() if r.deadline <= now]:
            self._forget(request)
            if request.data or not request.kept:  # an idle kept connection just ends, like its keep-alive time
                try:
                    request.connection.send(_TIMEOUT_ANSWER)
                except OSError:
                    pass
            request.connection.close()

    def _close_idle_kept(self) -> None:
        idle_before = time.monotonic() - DRAIN_IDLE_SECONDS
        for request in [r for r in self._unfinished.values() if r.kept and not r.data and r.idle_since <= idle_before]:
            self._forget(request)
            request.connection.close()

    def _serve(self, request: _Unfinished) -> None:
        simple = None if self.cfg.is_ssl else simple_request(request.data, self.cfg)
        if simple is not None:
            self._serve_simple(request, simple)
            return
        client = _PrereadSocket(request.connection, request.data, request_length(request.data))
        # The rest of a body larger than PREREAD_BYTES is read blocking, but never waits on a client for long.
        client.settimeout(self.app.read_timeout)
        self.handle(request.listener, client, request.address)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self._close_finished()
        super().handle(listener, client, addr)

    def handle_request(self, listener: Any, req: Any, client: _PrereadSocket, addr: Any) -> None:
        response, environ = wsgi.create(req, client, addr, listener.getsockname(), self.cfg)
        self._count_request()
        body = self.wsgi(environ, response.start_response)
        try:
            data = b"".join(body)
            if response.response_length is None:
                response.headers.append(("Content-Length", str(len(data))))
            # req.should_close: the client's `Connection: close`, or HTTP/1.0 without keep-alive.
            keep = (
                self.alive
                and client.whole_request_read()
                and len(self._unfinished) < MAX_KEPT
                and not req.should_close()
            )
            head = self._head(f"{req.version[0]}.{req.version[1]}", response.status, response.headers, keep)
            client.sendall(head + (b"" if req.method == "HEAD" else data))
            response.headers_sent = True
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        # The response is sent: take the connection over. gunicorn's close then finds a detached socket
        # and does nothing; on any error before this point its own (blocking) close still runs.
        leftover = client.leftover
        connection = socket.socket(fileno=client.detach())
        if keep:
            self._keep(_Unfinished(connection, addr, listener, leftover))
        else:
            self._linger(connection)

    def _serve_simple(self, request: _Unfinished, simple: SimpleRequest) -> None:
        """`handle` for a request `simple_request` parsed: the same exchange without gunicorn's parser, its
        environ (this one holds what PEP 3333 requires and what `ModelServer` reads) or its response object."""
        self._close_finished()
        connection, data = request.connection, request.data
        environ = {
            **self._environ,
            **simple.headers,
            "REQUEST_METHOD": simple.method,
            "PATH_INFO": simple.path,
            "QUERY_STRING": simple.query,
            "RAW_URI": f"{simple.path}?{simple.query}" if simple.query else simple.path,
            **self._listener_environ[request.listener],
            "REMOTE_ADDR": request.address[0],
            "REMOTE_PORT": str(request.address[1]),
            "wsgi.input": io.BytesIO(data[simple.body_start : simple.end]),
        }
        started: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return connection.sendall  # WSGI's write(): ModelServer never calls it

        self._count_request()
        try:
            body = self.wsgi(environ, start_response)
            try:
                payload = b"".join(body)
                status, headers = started  # ModelServer's headers hold the Content-Length
                keep = self.alive and len(self._unfinished) < MAX_KEPT
                self._send(connection, self._head("1.1", status, headers, keep) + payload)
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        except OSError:  # the client went away, or did not read its answer within the read timeout
            connection.close()
            return
        except Exception as exc:  # as gunicorn's handle: a 500, logged, and the connection closed
            self.handle_error(None, connection, request.address, exc)
            connection.close()
            return
        if keep:
            request.data = data[simple.end :]
            self._keep(request)
        else:
            self._linger(connection)

    def _count_request(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False

    def _head(self, version: str, status: str, headers: list[tuple[str, str]], keep: bool) -> bytes:
        lines = [
            f"HTTP/{version} {status}\r\nServer: {SERVER}\r\nDate: {self._date()}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n",
            *(f"{name}: {value}\r\n" for name, value in headers),
            "\r\n",
        ]
        return "".join(lines).encode("latin-1")

    def _send(self, connection: socket.socket, data: bytes) -> None:
        # The connection is non-blocking: a response larger than the socket's buffer is finished blocking, each
        # wait bounded by the read timeout.
        try:
            sent = connection.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            connection.settimeout(self.app.read_timeout)
            connection.sendall(memoryview(data)[sent:])

    def _linger(self, connection: socket.socket) -> None:
        try:
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        connection.setblocking(False)
        self._lingering.append((time.monotonic() + LINGER_SECONDS, connection))
        if len(self._lingering) > MAX_LINGERING:
            self._lingering.popleft()[1].close()

    def _date(self) -> str:
        # gunicorn formats the Date header anew for every response (2 % of a 32-row request); it changes once a second.
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date_text = now, util.http_date(now)
        return self._date_text

    def _keep(self, request: _Unfinished) -> None:
        request.connection.setblocking(False)
        request.kept = True
        request.idle_since = time.monotonic()
        if request.data and request_complete(request.data, self._body_limit):
            self._ready.append(request)
            return
        timeout = self.app.read_timeout if request.data else self.cfg.keepalive
        request.deadline = request.idle_since + timeout
        self._register(request)

    def _close_finished(self) -> None:
        now = time.monotonic()
        for _ in range(len(self._lingering)):
            deadline, connection = self._lingering.popleft()
            try:
                closed = not connection.recv(65536)
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed or now >= deadline:
                connection.close()
            else:
                self._lingering.append((deadline, connection))


def _post_worker_init(worker: Any) -> None:
    # Called after the worker built the app (loaded every model) and just before it starts accepting.
    marker = ready_marker(worker.app.run_dir, worker.pid)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _worker_exit(server: Any, worker: Any) -> None:
    ready_marker(worker.app.run_dir, worker.pid).unlink(missing_ok=True)
    app = getattr(worker, "wsgi", None)
    close = getattr(app, "close", None)
    if close is not None:
        close()


def _on_exit(server: Any) -> None:
    shutil.rmtree(server.app.run_dir, ignore_errors=True)


def settle_collector() -> None:
    """Keep Python's cyclic garbage collector off the request path of a worker whose models are loaded.

    The loaded models are hundreds of thousands of objects that live as long as the worker. Left to the
    collector, every full collection walked them all, a pause of tens of milliseconds that was the p99 latency
    at one connection (65 ms; 7.5 ms once frozen). And every request leaves its event's lists in the shipper's
    buffer until they are shipped, so at the default threshold (700 more containers allocated than freed) a
    collection ran every ~16 requests of 32 rows, ~25-35 µs a request (~6 % of its CPU), and found nothing to
    collect in a whole benchmark run: requests make no reference cycles. So collections are made rare, not
    turned off: GC_THRESHOLD is a few hundred requests' worth of buffered events, and cycles an error path may
    make are still collected.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 10)


class ModelServerApplication(BaseApplication):
    """A gunicorn application whose workers each build a `ModelServer` from the spec the master accepted (a
    private copy of the spec file, see the module's note)."""

    def __init__(
        self, spec_path: str, run_dir: Path, options: dict[str, Any], read_timeout: float = READ_TIMEOUT_SECONDS
    ) -> None:
        self.spec_path = spec_path
        self.read_timeout = read_timeout
        self.run_dir = run_dir
        self.served_spec_path = run_dir / "served-spec.json"
        self.options = options
        copy_privately(spec_path, self.served_spec_path)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("post_worker_init", _post_worker_init)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("on_exit", _on_exit)

    def load(self) -> Any:
        # Imported here, in the worker: the master must not load numpy, pandas or model libraries.
        from serving.app import create_app

        app = create_app(self.served_spec_path, metrics_dir=self.run_dir / "metrics")
        settle_collector()
        return app

    def run(self) -> None:
        ModelServerArbiter(self).run()


def listening_sockets(host: str, port: int, service_port: int | None) -> list[int]:
    """Bind the replica's own port and, if given, the deployment's shared service port; their descriptors.

    The service port is bound with SO_REUSEPORT, so that every replica of the deployment can listen on it
    and the kernel spreads connections across them. The sockets are made here rather than by gunicorn: its
    `reuse_port` gives every worker a socket of its own, and a worker stopped by a graceful reload would
    then reset the connections queued on its socket. These are shared by the master and all its workers,
    old and new. gunicorn takes both as `fd://` binds (it cannot mix those with addresses).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    descriptors = []
    for number, shared in [(port, False), *([(service_port, True)] if service_port is not None else [])]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, number))
        except OSError as exc:
            sock.close()
            for descriptor in descriptors:
                os.close(descriptor)
            raise OSError(exc.errno, f"cannot listen on {host}:{number}: {exc.strerror}") from exc
        sock.set_inheritable(True)
        # gunicorn owns the descriptor from here on (it closes it after wrapping it in its listener).
        descriptors.append(sock.detach())
    return descriptors


def gunicorn_options(
    *,
    descriptors: list[int],
    workers: int,
    threads: int,
    pid_file: str | None,
    timeout: int,
    log_level: str,
    proc_name: str,
) -> dict[str, Any]:
    return {
        "bind": [f"fd://{descriptor}" for descriptor in descriptors],
        "workers": workers,
        # Sync workers (one request at a time) are the fastest for CPU-bound predictions; threads only help
        # when models release the GIL. `keepalive` is how long a kept connection may stay idle (both classes).
        "worker_class": "gthread" if threads > 1 else "serving.server.ModelServerWorker",
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": 30,
        "keepalive": 5,
        "pidfile": pid_file,
        # Every prediction is already an event for the console; an access log line per request is waste.
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level,
        "proc_name": proc_name,
        "preload_app": False,
        "backlog": 2048,
        "max_requests": 0,
        # gunicorn's control socket lives at one path per user; several model servers on a host would collide.
        "control_socket_disable": True,
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }
