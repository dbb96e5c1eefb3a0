"""Fixtures for end-to-end tests on the real stack: Postgres, Redis, a Celery worker process and Chromium.

- `celery_worker`: a real `celery -A mlops_console worker --pool solo` process on the Redis broker,
  reading the test database. Only committed rows are visible to it, so tests that use it need
  `transactional_db` or `live_server`. Tasks queued by the test process go to a queue private to
  this test session, so a stray worker elsewhere cannot take them. A test that asks for no worker runs
  its tasks in its own process, whether or not an earlier test started the worker.
- `artifact_root`: one artifact store for the session, shared by the test process and the worker.
- `browser`, `page`, `js_errors`: headless Chromium through Playwright; every console error and
  uncaught exception on the page is collected in `js_errors`, which a test asserts is empty.
- `browser_login(page, live_server, user)` signs in through the login form; `screenshot(page, name,
  width=…, height=…)` reloads the page at that viewport, draws every chart and saves a full-page
  picture in var/screenshots/.
- `wait_for(predicate, timeout=…)` polls until something is true.
- `worker_console`: the console as a gunicorn process of its own (tests/sdk/conftest.py) whose tasks go to
  `celery_worker`, sharing its artifact store and model server state; for clients that must talk HTTP to a
  real console process (the SDK, the `mlops` CLI).

Everything skips, with the reason, when Redis or Chromium is missing; under CI it fails instead
(`tests.required_services.require_service`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection, connections

from tests.required_services import require_service
from tests.sdk.conftest import ConsoleProcess, start_console, use_console

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "var" / "screenshots"
TEST_PASSWORD = "correct horse battery staple"  # what tests.factories.UserFactory sets
WORKER_START_TIMEOUT = 60.0


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> object:
    """Poll until `predicate()` returns something truthy, and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def e2e_artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-artifacts")
    (root / "tmp").mkdir()
    return root


@pytest.fixture(autouse=True)
def artifact_root(settings: object, e2e_artifact_root: Path) -> Path:
    """Overrides the per-test store of tests/conftest.py: the worker process must see the same files."""
    settings.ARTIFACT_ROOT = e2e_artifact_root
    settings.FILE_UPLOAD_TEMP_DIR = str(e2e_artifact_root / "tmp")
    return e2e_artifact_root


@pytest.fixture(autouse=True)
def unhashed_static_files(settings: object) -> None:
    """pytest-django's live server serves /static/ from the finders, which know files by their plain names.

    The production storage links to hashed names (bootstrap.min.3f2a….css), which the finders cannot
    find; links to the plain names are served, so the pages load their CSS and JavaScript.
    """
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def database_url() -> str:
    """The URL of the database the tests run against (pytest-django's test database, once it exists)."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{credentials}@{host}/{db['NAME']}"


@dataclass
class CeleryWorker:
    process: subprocess.Popen
    queue: str
    log_path: Path
    env: dict[str, str] = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, e2e_artifact_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """A Celery worker process for the whole session, on a private queue, reading the test database."""
    from mlops_console.celery import app

    broker = django_settings.CELERY_BROKER_URL
    if not broker.startswith("redis://") or not _redis_reachable(broker):
        require_service(f"the e2e worker needs a reachable Redis broker; CELERY_BROKER_URL is {broker!r}")
    queue = f"e2e-{uuid.uuid4().hex[:10]}"
    var_dir = tmp_path_factory.mktemp("e2e-worker")
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # Tasks the worker itself queues (the next pipeline stage, HPO trials) stay on the private queue.
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "ARTIFACT_ROOT": str(e2e_artifact_root),
        "VAR_DIR": str(var_dir),
        "DJANGO_SETTINGS_MODULE": "mlops_console.settings",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = var_dir / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "mlops_console", "worker", "--pool", "solo", "-Q", queue]
    command += ["-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = CeleryWorker(process=process, queue=queue, log_path=log_path, env=env)
    try:
        wait_for(
            lambda: " ready." in worker.log() or process.poll() is not None,
            timeout=WORKER_START_TIMEOUT,
            what="the Celery worker to start",
        )
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {process.returncode}:\n{worker.log()[-4000:]}")
        saved = (app.conf.task_always_eager, app.conf.task_default_queue)
        app.conf.task_always_eager, app.conf.task_default_queue = False, queue
        try:
            yield worker
        finally:
            app.conf.task_always_eager, app.conf.task_default_queue = saved
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        import redis

        redis.Redis.from_url(broker).delete(queue)
        # With eager tasks off, a deployment a test creates is also reconciled by this worker, which starts its
        # model servers in its own state folder (whichever reconcile takes the lease first serves). Model
        # servers outlive the worker on purpose, so the session stops them.
        from worker.deployments.local import LocalProcessBackend

        LocalProcessBackend(state_dir=var_dir / "deployments").stop_all()


@pytest.fixture(autouse=True)
def tasks_in_process_without_a_worker(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that asks for no worker (`celery_worker`, `worker_console`) runs the tasks it queues in its own
    process, as it does when no test of the session started the worker. Once one has, eager tasks are off until
    the session ends, and a later test's queued reconcile would go to the worker, which keeps model servers in a
    state folder of its own: it raced the test's own reconciles (two servers for one deployment, one of them
    exiting on the taken port)."""
    if "celery_worker" in request.fixturenames:
        yield
        return
    from mlops_console.celery import app

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = eager


@pytest.fixture(scope="session")
def worker_console_process(celery_worker: CeleryWorker) -> Iterator[ConsoleProcess]:
    """gunicorn with the worker's environment: its database, broker, private queue, artifacts and state."""
    console = start_console(celery_worker.env, Path(celery_worker.env["VAR_DIR"]))
    yield console
    console.close()


@pytest.fixture
def worker_console(worker_console_process: ConsoleProcess, settings: object, transactional_db: None) -> ConsoleProcess:
    return use_console(worker_console_process, settings)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one test module; Playwright's event loop and the flag below end with the module."""
    if not CHROMIUM.exists():
        require_service(f"Chromium is not installed at {CHROMIUM}; the browser tests need it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, which makes Django refuse ORM calls as if
    # they came from async code. The tests' ORM calls are synchronous; the flag must not outlive them,
    # since `check --deploy` (run by other tests in subprocesses) rejects it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            yield instance
            instance.close()
            # While the loop runs, Django keeps the ORM's connections apart from the thread's own (asgiref
            # treats the thread as async): close them here, or they stay open and block the test database's drop.
            connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def js_errors() -> list[str]:
    """Uncaught exceptions and console errors of `page`; a test asserts this stays empty."""
    return []


@pytest.fixture
def page(browser: object, js_errors: list[str]) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    new_page = context.new_page()
    new_page.on("pageerror", lambda error: js_errors.append(f"uncaught: {error}"))

    def console(message: object) -> None:
        if message.type == "error":
            js_errors.append(f"console.error: {message.text}")

    new_page.on("console", console)
    yield new_page
    context.close()


def browser_login(page: object, live_server: object, user: object, password: str = TEST_PASSWORD) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def draw_all_plots(page: object) -> None:
    """Scroll every Plotly chart into view (they are drawn lazily) and wait until all are drawn."""
    plots = page.locator(".plot[data-figure]")
    for index in range(plots.count()):
        plots.nth(index).scroll_into_view_if_needed()
    page.wait_for_function(
        "document.querySelectorAll('.plot > .plot-container').length === "
        "document.querySelectorAll('.plot[data-figure]').length"
    )


def screenshot(page: object, name: str, *, width: int, height: int) -> Path:
    """A full-page screenshot of the current page freshly loaded at the given viewport, into var/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": height})
    page.reload(wait_until="networkidle")
    draw_all_plots(page)
    # From the top, so the sticky navigation bar sits at the top of the picture.
    page.evaluate("window.scrollTo(0, 0)")
    path = SCREENSHOTS / f"{name}-{width}x{height}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
