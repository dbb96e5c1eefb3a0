"""SDK fixtures: the SDK talks to a live console process with a personal API token, exactly as a notebook or a
CI job would.

- `console_process` (session): the console under gunicorn, a process of its own, on the test database, with
  tasks run eagerly in it; `start_console(env)` starts one with any environment (tests/e2e/test_sdk.py gives it
  the Celery worker's, so its tasks go to the worker). Tests that use it need `transactional_db`: the console
  sees only committed rows, and the test sees what the console commits.
- `live_console`: the running console for one test, with the test process's settings pointed at the same
  artifact store, model server state folder and console URL, so rows and files the test makes are the
  console's too. It has `.url`, like pytest-django's `live_server`.
- `sdk_env(console, user, project)` is the environment a shell needs (MLOPS_URL, MLOPS_TOKEN, MLOPS_PROJECT,
  and PYTHONPATH so `python -m mlops_sdk.cli` finds the SDK in the tree, as `pip install ./sdk` would install it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import LazySettings
from django.conf import settings as django_settings
from django.db import connection

from apps.core.services import api_token_create

ROOT = Path(__file__).resolve().parents[2]
SDK_ROOT = ROOT / "sdk"
CONSOLE_START_TIMEOUT = 60.0


@dataclass
class ConsoleProcess:
    """gunicorn serving the console; `env` is the environment it runs with (its settings)."""

    url: str
    process: subprocess.Popen
    env: dict[str, str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def path(self, name: str) -> Path:
        return Path(self.env[name])

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def database_url() -> str:
    """The URL of pytest-django's test database (once it exists)."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_console(env: Mapping[str, str], var_dir: Path) -> ConsoleProcess:
    """gunicorn on a free port with `env` on top of this process's environment; artifacts, model servers'
    state and logs under `var_dir` unless `env` says otherwise."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    full = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "test-only-secret-key"),
        "VAR_DIR": str(var_dir),
        "ARTIFACT_ROOT": str(var_dir / "artifacts"),
        "DEPLOYMENTS_STATE_DIR": str(var_dir / "deployments"),
        "DEPLOYMENTS_SERVER_WORKERS": "2",
        "STATIC_ROOT": str(django_settings.STATIC_ROOT),
        **env,
        # The model servers it starts ship their prediction events back to it.
        "CONSOLE_INTERNAL_URL": url,
    }
    full.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    for name in ("ARTIFACT_ROOT", "DEPLOYMENTS_STATE_DIR"):
        Path(full[name]).mkdir(parents=True, exist_ok=True)
    (Path(full["ARTIFACT_ROOT"]) / "tmp").mkdir(exist_ok=True)
    log_path = var_dir / "gunicorn.log"
    # Threads: a request that starts a model server (an eager reconcile) must not keep the server's own events
    # from being answered.
    command = [sys.executable, "-m", "gunicorn", "mlops_console.wsgi", "-b", f"127.0.0.1:{port}"]
    command += ["-w", "2", "--threads", "4", "--timeout", "120"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT)
    console = ConsoleProcess(url=url, process=process, env=full, log_path=log_path)
    deadline = time.monotonic() + CONSOLE_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the console exited with {process.returncode}:\n{console.log()[-4000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return console
        except OSError:
            time.sleep(0.2)
    console.close()
    pytest.fail(f"the console did not start in {CONSOLE_START_TIMEOUT:.0f} s:\n{console.log()[-4000:]}")


@pytest.fixture(scope="session")
def console_process(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    """The console as its own process for the session, running its tasks eagerly (ended before the test
    database is dropped, since it depends on its creation)."""
    console = start_console({"CELERY_TASK_ALWAYS_EAGER": "1"}, tmp_path_factory.mktemp("console"))
    yield console
    console.close()


def use_console(console: ConsoleProcess, settings: LazySettings) -> ConsoleProcess:
    """Point this process's settings at the console's artifact store, model server state and URL."""
    settings.ARTIFACT_ROOT = console.path("ARTIFACT_ROOT")
    settings.FILE_UPLOAD_TEMP_DIR = str(console.path("ARTIFACT_ROOT") / "tmp")
    settings.DEPLOYMENTS_STATE_DIR = console.path("DEPLOYMENTS_STATE_DIR")
    settings.DEPLOYMENTS_SERVER_WORKERS = int(console.env["DEPLOYMENTS_SERVER_WORKERS"])
    settings.CONSOLE_INTERNAL_URL = console.url
    return console


def stop_model_servers(console: ConsoleProcess) -> None:
    from worker.deployments.local import LocalProcessBackend

    backend = LocalProcessBackend(state_dir=console.path("DEPLOYMENTS_STATE_DIR"))
    for name in backend.names():
        backend.delete(name)


@pytest.fixture
def live_console(
    console_process: ConsoleProcess, settings: LazySettings, transactional_db: None
) -> Iterator[ConsoleProcess]:
    """The console process for one test; the model servers started during the test are stopped after it."""
    yield use_console(console_process, settings)
    stop_model_servers(console_process)


def token_for(user: Any) -> str:
    _, key = api_token_create(user=user, name="sdk tests")
    return key


def sdk_client(console: Any, user: Any, project: Any, **kwargs: Any) -> Any:
    from mlops_sdk import Client

    return Client(console.url, token=token_for(user), project=project.slug, **kwargs)


def sdk_env(console: Any, user: Any, project: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLOPS_")}
    return {
        **env,
        "MLOPS_URL": console.url,
        "MLOPS_TOKEN": token_for(user),
        "MLOPS_PROJECT": project.slug,
        "PYTHONPATH": str(SDK_ROOT),
    }


@pytest.fixture
def sdk(live_console: ConsoleProcess, member: Any, project: Any) -> Any:
    """The SDK's client as an editor of the project (quick retries: the tests do not wait on backoff)."""
    return sdk_client(live_console, member, project, backoff=0.05)
