"""Shared fixtures.

- Fast tests run Celery tasks eagerly (CELERY_TASK_ALWAYS_EAGER=1 in `make test`). Work that a service
  queues with `transaction.on_commit` runs only when the callbacks are captured and executed: use
  pytest-django's `django_capture_on_commit_callbacks(execute=True)`.
- Every test gets its own ARTIFACT_ROOT, so stored files never leak between tests.
- `owner`, `member` (editor), `approver`, `viewer` and `outsider` share one project, so every
  permission check can be tested against each of them.
- `make test` runs the suite in two pytest-xdist processes (the fast tests, then the end-to-end ones), each
  with a Postgres test database and a Redis database of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from apps.core.choices import ProjectRole
from tests.factories import MembershipFactory, ProjectFactory, UserFactory


@pytest.fixture(scope="session", autouse=True)
def broker_database_of_this_process(worker_id: str) -> None:
    """Under pytest-xdist, each test process uses the next Redis database after the configured one (gw0: +1,
    gw1: +2): tests that run a real Celery worker on the default queue, or count its depth, would otherwise
    take each other's messages. The model servers and workers a test starts inherit it from the environment."""
    url = django_settings.CELERY_BROKER_URL
    parts = urlsplit(url)
    if worker_id == "master" or parts.scheme != "redis":
        return
    from mlops_console.celery import app

    database = int(parts.path.strip("/") or 0) + 1 + int(worker_id.removeprefix("gw"))
    own = urlunsplit(parts._replace(path=f"/{database}"))
    os.environ["CELERY_BROKER_URL"] = django_settings.CELERY_BROKER_URL = app.conf.broker_url = own


@pytest.fixture(autouse=True)
def artifact_root(settings: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    (root / "tmp").mkdir()
    settings.ARTIFACT_ROOT = root
    settings.FILE_UPLOAD_TEMP_DIR = str(root / "tmp")
    return root


@pytest.fixture
def project(db: None) -> object:
    return ProjectFactory()


def _member(project: object, role: str, username: str) -> object:
    user = UserFactory(username=username)
    MembershipFactory(project=project, user=user, role=role)
    return user


@pytest.fixture
def owner(project: object) -> object:
    return _member(project, ProjectRole.OWNER, "owner")


@pytest.fixture
def member(project: object) -> object:
    return _member(project, ProjectRole.EDITOR, "member")


@pytest.fixture
def approver(project: object) -> object:
    return _member(project, ProjectRole.APPROVER, "approver")


@pytest.fixture
def viewer(project: object) -> object:
    return _member(project, ProjectRole.VIEWER, "viewer")


@pytest.fixture
def outsider(db: None) -> object:
    return UserFactory(username="outsider")


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def client_for(user: object) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# Datasets: versions made through the real upload service, profiled eagerly when asked.

SMALL_CLASSIFICATION_CSV = b"sepal_length,sepal_width,species\n" + b"".join(
    f"{4 + i % 7 * 0.5},{2 + i % 5 * 0.3},{['setosa', 'versicolor', 'virginica'][i % 3]}\n".encode() for i in range(60)
)


@pytest.fixture
def dataset(project: object, owner: object) -> object:
    from tests.factories import DatasetFactory

    return DatasetFactory(project=project, created_by=owner)


@pytest.fixture
def make_dataset_version(tmp_path: Path, django_capture_on_commit_callbacks: object) -> object:
    """`make(dataset, content, file_name="data.csv", actor=None, profile=True)` -> a DatasetVersion.

    The file goes through `dataset_version_create` like an upload, by `actor` or else a new editor of the
    dataset's project. With profile=True the version is profiled (by the service the Celery task calls)
    before it is returned, so it is ready or failed.
    """
    import time

    from apps.datasets.models import DatasetVersion
    from apps.datasets.services import dataset_version_create, dataset_version_profile

    counter = iter(range(1_000_000))

    def make(
        dataset: object, content: bytes, *, file_name: str = "data.csv", actor: object = None, profile: bool = True
    ) -> object:
        path = tmp_path / f"upload-{next(counter)}"
        path.write_bytes(content)
        if actor is None:
            actor = MembershipFactory(project=dataset.project, role=ProjectRole.EDITOR).user
        with django_capture_on_commit_callbacks(execute=False):
            version, _ = dataset_version_create(dataset=dataset, path=path, file_name=file_name, actor=actor)
        if profile:
            dataset_version_profile(version_id=version.pk)
            # With a live worker (e2e tests commit, so the task was sent) the worker may have claimed it first.
            deadline = time.monotonic() + 60
            while not DatasetVersion.objects.get(pk=version.pk).is_settled and time.monotonic() < deadline:
                time.sleep(0.1)
        version.refresh_from_db()
        return version

    return make


@pytest.fixture
def ready_dataset_version(dataset: object, owner: object, make_dataset_version: object) -> object:
    """A profiled version of a small three-class dataset whose target column is `species`."""
    return make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, file_name="flowers.csv", actor=owner)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: object) -> None:
    """Tests make many users; the production hasher's deliberate slowness (0.3 s a user) buys nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def no_model_server_outlives_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Model servers run in sessions of their own (they outlive a console on purpose), so one a test or a
    test's Celery worker leaves behind would keep running after the suite: every model server whose command
    line names a file of this run's temporary folder is killed when the run ends, and the run fails."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    import psutil

    leaked = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "serving" in command and any(base in part for part in command):
            leaked.append(" ".join(command))
            with contextlib.suppress(psutil.Error):  # it may have just exited
                process.kill()
    assert not leaked, f"model servers outlived the test run: {leaked}"


@pytest.fixture(autouse=True)
def deployments_state_dir(settings: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Model servers a test starts (the reconciler runs eagerly, e.g. after a pipeline's deploy stage) live in
    a folder of the test's own and are stopped when it ends, so none outlives the test run."""
    state = tmp_path_factory.mktemp("deployments")
    settings.DEPLOYMENTS_STATE_DIR = state
    yield state
    from worker.deployments.local import LocalProcessBackend

    backend = LocalProcessBackend(state_dir=state)
    for name in backend.names():
        backend.delete(name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the end-to-end tests last: their session-scoped Celery worker outlives each test, and a task it
    is still finishing must not hold rows that a later fast test's teardown truncates."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
