"""Shared fixtures.

- Fast tests run Celery tasks eagerly (CELERY_TASK_ALWAYS_EAGER=1 in `make test`). Work that a service
  queues with `transaction.on_commit` runs only when the callbacks are captured and executed: use
  pytest-django's `django_capture_on_commit_callbacks(execute=True)`.
- Every test gets its own ARTIFACT_ROOT, so stored files never leak between tests.
- `owner`, `member` (editor), `approver`, `viewer` and `outsider` share one project, so every
  permission check can be tested against each of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from apps.core.choices import ProjectRole
from tests.factories import MembershipFactory, ProjectFactory, UserFactory


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


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: object) -> None:
    """Users are made in nearly every test; the production hasher's deliberate slowness (~0.3 s) adds up."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
