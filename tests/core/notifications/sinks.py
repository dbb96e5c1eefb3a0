"""Real receivers for the notification tests: a local HTTP server and a local SMTP server.

The HTTP server answers by path: `/ok` 204, `/fail` 500, `/gone` 410, `/limited` 429 with `Retry-After`
(`retry_after`), `/hang` waits `hang_seconds` before answering (longer than the client's timeout),
`/redirect` 307 to `redirect_to`, `/services/…` (a Slack incoming webhook's path) 200. `script`, when not
empty, overrides the path: the next status is popped from it for each request.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class HookServer:
    server: ThreadingHTTPServer | None = None
    received: list[Received] = field(default_factory=list)
    redirect_to: str = ""
    retry_after: str = "7"
    hang_seconds: float = 3.0
    script: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_server() -> HookServer:
    hook = HookServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            hook.received.append(Received(self.path, headers, body, time.monotonic()))
            status = hook.script.pop(0) if hook.script else None
            if status is None and self.path == "/hang":
                time.sleep(hook.hang_seconds)
                status = 204
            if status is None and self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", hook.redirect_to)
            else:
                if status is None and self.path.startswith("/services/"):
                    status = 200
                if status is None:
                    status = {"/ok": 204, "/fail": 500, "/gone": 410, "/limited": 429}.get(self.path, 404)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", hook.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    hook.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.server.daemon_threads = True
    threading.Thread(target=hook.server.serve_forever, daemon=True).start()
    return hook


@contextmanager
def running_server() -> Iterator[HookServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@contextmanager
def running_smtp(settings: Any) -> Iterator[list]:
    """A real SMTP server on a free loopback port, with Django's email settings pointed at it."""
    from aiosmtpd.controller import Controller

    received: list = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = False
    try:
        yield received
    finally:
        controller.stop()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
