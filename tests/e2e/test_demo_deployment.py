"""`manage.py load_demo_deployment` while a worker is reconciling the same deployment: it waits for that
reconcile and then serves, instead of failing with "not ready (busy)". Real model server processes."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from apps.deployments import services
from apps.deployments.backends import get_backend
from apps.deployments.models import Deployment
from apps.deployments.services.reconcile import RECONCILE_LEASE_SECONDS
from apps.registry.services import model_version_register
from tests.factories import UserFactory
from tests.registry.registry_helpers import sklearn_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HELD_SECONDS = 1.5


@pytest.fixture
def state_dir(settings: LazySettings, tmp_path: Path) -> Iterator[Path]:
    settings.DEPLOYMENTS_STATE_DIR = tmp_path / "deployments"
    settings.DEPLOYMENTS_SERVER_WORKERS = 1
    yield settings.DEPLOYMENTS_STATE_DIR
    backend = get_backend("local")
    for name in backend.names():
        backend.delete(name)


def test_the_demo_command_waits_for_a_workers_reconcile(project: Any, state_dir: Path, tmp_path: Path) -> None:
    project.slug = "demo"
    project.save()
    admin = UserFactory(username="admin", is_staff=True, is_superuser=True)
    version = model_version_register(
        project=project, model_name="iris", bundle_path=sklearn_bundle(tmp_path / "iris.zip"), actor=admin
    )
    # A worker's reconcile in progress, from the command's side: the worker holds the lease for a while (a model
    # server boot), then lets go. A real reconcile here can finish before the command starts; this cannot. The
    # lease is taken before the commit, so the reconcile that deployment_create queues (run in this process, see
    # tests/e2e/conftest.py) finds it busy too.
    with transaction.atomic():
        deployment = services.deployment_create(project=project, name="iris", actor=admin, model_version=version)
        lease = Deployment.objects.filter(pk=deployment.pk)
        assert lease.update(reconcile_lease_until=timezone.now() + timedelta(seconds=RECONCILE_LEASE_SECONDS)) == 1
    assert lease.get().url is None, "nothing serves yet"

    def worker() -> None:
        try:
            time.sleep(HELD_SECONDS)
            lease.update(reconcile_lease_until=None)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    out = io.StringIO()
    call_command("load_demo_deployment", stdout=out)
    thread.join()
    assert time.monotonic() - started >= HELD_SECONDS
    deployment.refresh_from_db()
    assert deployment.url and f"Deployment iris serves {version} at {deployment.url}" in out.getvalue()
    assert deployment.reconcile_lease_until is None
