from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


def child_environment(bind: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of web, worker and beat: model servers started by the worker ship their prediction
    events to this console, so unless CONSOLE_INTERNAL_URL says otherwise it is the address bound here."""
    host, _, port = bind.rpartition(":")
    if host in {"", "0.0.0.0", "[::]"}:
        host = "127.0.0.1"
    return {"CONSOLE_INTERNAL_URL": f"http://{host}:{port}", **environ}


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and the beat scheduler together; Ctrl-C stops all three."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--bind", default=os.environ.get("CONSOLE_BIND", "127.0.0.1:8000"))
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args: Any, bind: str, concurrency: int, **options: Any) -> None:
        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        beat_schedule = str(settings.VAR_DIR / "celerybeat-schedule")
        commands = {
            "web": [python, manage, "runserver", bind, "--noreload"],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "mlops_console",
                "worker",
                "-l",
                "info",
                "--concurrency",
                str(concurrency),
                "-n",
                "worker@%h",
            ],
            "beat": [python, "-m", "celery", "-A", "mlops_console", "beat", "-l", "info", "-s", beat_schedule],
        }
        environment = child_environment(bind, os.environ)
        children = {
            name: subprocess.Popen(cmd, cwd=settings.BASE_DIR, env=environment) for name, cmd in commands.items()
        }
        self.stdout.write(self.style.SUCCESS(f"MLOps console running at http://{bind}/  (Ctrl-C stops it)"))
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(f"{name} exited with code {child.returncode}; stopping the others.")
                        stopping = True
                time.sleep(0.5)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for child in children.values():
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
            self.stdout.write("Stopped web, worker and beat.")
