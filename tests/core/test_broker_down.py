"""The task queue (Redis) down while the database is up: a change is saved and answered 503, never 500, and the
beat sweeps send its work once Redis is back.

Each test starts its own redis-server on a free port, points the Celery app at it with eager execution off, and
stops it to make the outage real (the shared Redis of the other tests is never touched).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu.pools
import pytest
import redis
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.core.queueing import QUEUE_DOWN_MESSAGE
from apps.deployments import services
from apps.deployments.models import Deployment
from apps.registry.choices import PromotionRequestStatus
from apps.registry.models import PromotionRequest, RegistryEvent
from mlops_console.celery import app
from tests.conftest import client_for
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db(transaction=True)


class RedisServer:
    """A redis-server of this test's own, on a free port, that can be stopped and started again on it."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def queued(self) -> list[tuple[str, list[Any]]]:
        """The (task name, args) of every message waiting in the default queue, oldest first."""
        raw = redis.Redis.from_url(self.url).lrange(app.conf.task_default_queue, 0, -1)
        messages = [json.loads(item) for item in reversed(raw)]
        return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def _reset_producers() -> None:
    """Forget pooled broker connections, so the next send connects to the broker configured now: kombu keeps
    its pools in process-wide groups keyed by connection (emptied here; they refill on demand), and the app
    and its amqp hold references to theirs."""
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; these tests need it")
    server = RedisServer(tmp_path)
    server.start()
    # Celery reads the broker URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", server.url)
    saved = {key: app.conf[key] for key in ("task_always_eager", "broker_transport_options")}
    app.conf.update(task_always_eager=False, broker_transport_options={})
    _reset_producers()
    try:
        yield server
    finally:
        app.conf.update(saved)
        _reset_producers()
        if server.process is not None:
            server.stop()


@pytest.fixture
def deployment(project: Any, owner: Any) -> Deployment:
    model = RegisteredModelFactory(project=project, name="iris")
    version = ModelVersionFactory(model=model, number=1)
    return services.deployment_create(project=project, name="iris", actor=owner, model_version=version)


def test_a_deployment_change_with_redis_down_is_saved_answered_503_and_swept_later(
    own_redis: RedisServer, deployment: Deployment, member: Any
) -> None:
    assert own_redis.queued() == [("deployments.reconcile", [deployment.pk])], "creating it sent its reconcile"
    redis.Redis.from_url(own_redis.url).flushdb()
    own_redis.stop()

    response = client_for(member).post(
        f"/api/v1/deployments/{deployment.pk}/scale/", {"generation": deployment.generation, "replicas": 3}
    )

    assert response.status_code == 503, response.content
    assert response.json() == {"detail": QUEUE_DOWN_MESSAGE}
    assert "saved" in QUEUE_DOWN_MESSAGE and "when the task queue is back" in QUEUE_DOWN_MESSAGE
    saved = Deployment.objects.get(pk=deployment.pk)
    assert (saved.replicas, saved.generation) == (3, deployment.generation + 1), "the change stays committed"

    own_redis.start()
    assert own_redis.queued() == [], "nothing was sent while Redis was down"
    from apps.deployments.tasks import deployments_reconcile_all_task

    deployments_reconcile_all_task()  # what beat runs every DEPLOYMENTS_RECONCILE_SECONDS
    assert own_redis.queued() == [("deployments.reconcile", [deployment.pk])]


def test_a_page_action_with_redis_down_shows_the_message(
    own_redis: RedisServer, deployment: Deployment, member: Any
) -> None:
    own_redis.stop()
    browser = Client()
    browser.force_login(member)
    url = reverse("deployments:deployment-scale", args=[deployment.pk])
    data = {"generation": deployment.generation, "replicas": 2}

    page = browser.post(url, data, HTTP_REFERER=f"http://testserver{deployment.get_absolute_url()}", follow=True)

    assert page.status_code == 200 and page.redirect_chain[0][1] == 302
    assert QUEUE_DOWN_MESSAGE in page.content.decode()
    assert "Scaling to" not in page.content.decode(), "no success message for work that was not queued"
    assert Deployment.objects.get(pk=deployment.pk).replicas == 2
    # Without a page to go back to (a script posting the form), the error page says it, with the status.
    again = browser.post(url, {"generation": deployment.generation + 1, "replicas": 4})
    assert again.status_code == 503 and QUEUE_DOWN_MESSAGE in again.content.decode()


def test_an_approval_with_redis_down_is_saved_answered_503_and_dispatched_by_the_sweep(
    own_redis: RedisServer, project: Any, member: Any, approver: Any
) -> None:
    from apps.registry import services as registry_services
    from apps.registry.tasks import registry_events_dispatch_pending_task

    version = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="iris"), number=1)
    promotion = registry_services.promotion_request_create(version=version, actor=member, target_stage="staging")
    own_redis.stop()

    response = client_for(approver).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/", {"comment": "ok"})

    assert response.status_code == 503 and response.json() == {"detail": QUEUE_DOWN_MESSAGE}
    assert PromotionRequest.objects.get(pk=promotion.pk).status == PromotionRequestStatus.APPROVED
    approved = RegistryEvent.objects.filter(request=promotion, dispatched_at__isnull=True).order_by("pk").last()
    assert approved is not None, "the approval's event waits to be dispatched"

    own_redis.start()
    RegistryEvent.objects.update(created_at=timezone.now() - timedelta(hours=1))  # a straggler by now
    registry_events_dispatch_pending_task()  # what beat runs every two minutes; it dispatches in place
    approved.refresh_from_db()
    assert approved.dispatched_at is not None
    assert not RegistryEvent.objects.filter(dispatched_at__isnull=True).exists()
