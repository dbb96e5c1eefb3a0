"""System health: the page and the API as staff, project roles and outsiders, with the real Redis broker (queue
depth from a message really sent), beat's tick and a worker's heartbeat from the real signal handlers, model
server replicas with CPU and memory, reconcile lag, and drops the model servers report with their events."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import psutil
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from apps.deployments.services.reconcile import replica_cpu_percent
from apps.monitoring import celery_signals, health
from apps.monitoring.models import Heartbeat, TaskMetric
from apps.monitoring.tasks import heartbeat_task
from mlops_console.celery import app as celery_app
from tests.conftest import client_for
from worker.deployments.local import process_tree_usage

pytestmark = pytest.mark.django_db
API = "/api/v1/health/"
PAGE = "/monitoring/health/"


@pytest.fixture
def staff(db: None) -> Any:
    return get_user_model().objects.create_user("staff", password="x", is_staff=True)


@pytest.fixture
def broker() -> Any:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    yield client
    client.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    client.close()


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_staff_see_the_database_broker_and_the_depth_of_a_queue_holding_real_messages(staff: Any, broker: Any) -> None:
    # send_task publishes to Redis even with eager tasks: two messages wait in the default queue.
    for _ in range(2):
        celery_app.send_task("monitoring.heartbeat")
    assert broker.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 2
    body = client_for(staff).get(API).json()
    system = body["system"]
    assert system["database"]["status"] == "ok" and system["database"]["vendor"] == "postgresql"
    assert system["broker"] == {"status": "ok", "transport": "redis", "detail": "Redis answered PING"}
    assert {"queue": settings.CELERY_TASK_DEFAULT_QUEUE, "depth": 2} in system["queues"]
    page = browser(staff).get(PAGE)
    assert page.status_code == 200
    assert b'data-testid="queue-depth">2<' in page.content


def test_an_unreachable_broker_is_a_problem_and_its_queues_unknown(staff: Any, settings: Any) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    body = client_for(staff).get(API).json()
    assert body["system"]["broker"]["status"] == "problem"
    assert all(queue["depth"] is None for queue in body["system"]["queues"])
    assert body["status"] == "problem"
    assert any(problem.startswith("broker: unreachable") for problem in body["problems"])


def test_no_worker_answering_is_a_problem(staff: Any) -> None:
    """No worker consumes this test's Redis database: the broadcast gets no answer within the timeout."""
    started = time.perf_counter()
    workers = client_for(staff).get(API).json()["system"]["workers"]
    assert time.perf_counter() - started < 5
    assert workers["status"] == "problem" and workers["workers"] == []
    assert workers["detail"] == "no worker answered within a second"


def test_a_live_worker_answers_with_what_it_runs(staff: Any, broker: Any) -> None:
    """A real Celery worker on this test's Redis database answers the broadcast, running a task we sent it."""
    env = {**os.environ, "CELERY_TASK_ALWAYS_EAGER": "0"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mlops_console", "worker", "-P", "solo", "-n", "healthcheck@%h"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline:
            workers = health.workers(timezone.now())
            if workers["workers"]:
                break
            time.sleep(1)
        assert workers["status"] == "ok", workers
        assert [w["hostname"].split("@")[0] for w in workers["workers"]] == ["healthcheck"]
    finally:
        worker.terminate()
        worker.wait(30)


def test_beat_tick_and_the_worker_heartbeat_come_from_the_signal_handlers(staff: Any, monkeypatch: Any) -> None:
    assert health.beat(timezone.now())["detail"] == "beat never sent a task"
    monkeypatch.setitem(celery_signals._state, "in_beat", True)
    monkeypatch.setitem(celery_signals._state, "last_tick", 0.0)
    celery_signals._beat_tick(sender="monitoring.heartbeat")
    beat = client_for(staff).get(API).json()["system"]["beat"]
    assert beat["status"] == "ok" and beat["task"] == "monitoring.heartbeat" and beat["age_seconds"] < 5
    # Four missed heartbeats later beat is late.
    Heartbeat.objects.filter(name="beat").update(seen_at=timezone.now() - timedelta(minutes=3))
    assert health.beat(timezone.now())["status"] == "problem"
    heartbeat_task.delay()
    ran = Heartbeat.objects.get(name="worker")
    assert timezone.now() - ran.seen_at < timedelta(seconds=5)


def test_task_runs_are_counted_with_their_duration_and_outcome(db: None) -> None:
    heartbeat_task.delay()
    heartbeat_task.delay()
    metric = TaskMetric.objects.get(task="monitoring.heartbeat", outcome="success")
    assert metric.count == 2 and metric.seconds_sum > 0 and metric.bucket_00 + metric.bucket_01 == 2


def test_non_staff_see_their_projects_deployments_only(
    deployment: Any, viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    for user in (viewer, member, owner):
        body = client_for(user).get(API).json()
        assert body["system"] is None
        assert [row["name"] for row in body["deployments"]] == ["iris"]
        page = browser(user).get(PAGE)
        assert page.status_code == 200 and b'data-testid="health-staff-only"' in page.content
        assert b'data-deployment="iris"' in page.content
    body = client_for(outsider).get(API).json()
    assert body == {**body, "system": None, "deployments": []}
    assert b'data-deployment="iris"' not in browser(outsider).get(PAGE).content
    assert Client().get(API).status_code in (401, 403)
    assert Client().get(PAGE).status_code == 302


def test_replicas_reconcile_lag_and_problems(deployment: Any, viewer: Any) -> None:
    deployment.observed = {
        "replicas": [
            {"replica": "iris-0", "health": "ready", "pid": 10, "restarts": 0, "cpu_percent": 12.5, "rss_bytes": 2**20},
            {"replica": "iris-1", "health": "dead", "pid": 11, "restarts": 4, "crash_loop": True},
        ]
    }
    deployment.observed_at = timezone.now() - timedelta(seconds=3 * settings.DEPLOYMENTS_RECONCILE_SECONDS + 5)
    deployment.save(update_fields=["observed", "observed_at"])
    row = client_for(viewer).get(API).json()["deployments"][0]
    assert row["replicas_ready"] == 1
    assert row["replicas"][0]["cpu_percent"] == 12.5 and row["replicas"][0]["rss_bytes"] == 2**20
    assert row["replicas"][1]["restarts"] == 4 and row["replicas"][1]["crash_loop"] is True
    assert row["reconcile"]["lag_seconds"] >= 3 * settings.DEPLOYMENTS_RECONCILE_SECONDS
    assert "a replica is in a crash loop" in row["problems"]
    assert "not observed by the reconciler lately" in row["problems"]
    page = browser(viewer).get(PAGE).content.decode()
    assert "CPU 12.5%" in page and "crash loop" in page and "4 restarts" in page


def test_cpu_percent_needs_two_observations_of_the_same_process() -> None:
    before = {"replicas": [{"replica": "a-0", "pid": 5, "cpu_seconds": 10.0}]}
    now = {"replicas": [{"replica": "a-0", "pid": 5, "cpu_seconds": 13.0}, {"replica": "a-1", "pid": 6}]}
    result = replica_cpu_percent(now, before, elapsed=6.0)
    assert [r["cpu_percent"] for r in result["replicas"]] == [50.0, None]
    restarted = {"replicas": [{"replica": "a-0", "pid": 7, "cpu_seconds": 1.0}]}
    assert replica_cpu_percent(restarted, before, elapsed=6.0)["replicas"][0]["cpu_percent"] is None
    # A container replaced under the same replica name starts again from zero: not a rate.
    container = {"replicas": [{"replica": "d-0", "container_id": "abc", "cpu_seconds": 50.0}]}
    replaced = {"replicas": [{"replica": "d-0", "container_id": "def", "cpu_seconds": 0.5}]}
    assert replica_cpu_percent(replaced, container, elapsed=6.0)["replicas"][0]["cpu_percent"] is None


def test_process_tree_usage_adds_up_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(30)"])
    try:
        time.sleep(1.0)
        cpu, rss = process_tree_usage(os.getpid())
        own = psutil.Process().memory_info().rss
        assert rss is not None and rss >= own + 40_000_000
        assert cpu is not None and cpu > 0
    finally:
        child.kill()
        child.wait()
    assert process_tree_usage(child.pid) == (None, None)


def test_drops_reported_by_model_servers_with_their_events(deployment: Any, viewer: Any) -> None:
    token = deployment.ingest_token()
    ingest = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    for server, dropped in (("host:1", {"buffer_full": 3}), ("host:2", {"buffer_full": 1, "rejected": 2})):
        answer = ingest.post(
            "/api/v1/ingest/predictions/",
            {"events": [], "server": server, "dropped": dropped, "buffered": 5},
            content_type="application/json",
        )
        assert answer.status_code == 202, answer.content
    # A later report of the same process replaces its earlier one (the counts are cumulative).
    ingest.post(
        "/api/v1/ingest/predictions/",
        {"events": [], "server": "host:1", "dropped": {"buffer_full": 4}, "buffered": 0},
        content_type="application/json",
    )
    shipping = client_for(viewer).get(API).json()["deployments"][0]["shipping"]
    assert shipping["dropped"] == {"buffer_full": 5, "rejected": 2}
    assert shipping["dropped_total"] == 7 and shipping["buffered"] == 5 and shipping["servers"] == 2
    for bad, field in (
        ({"server": "", "dropped": {}}, "server"),
        ({"server": "h:1", "dropped": {"buffer_full": -1}}, "dropped"),
        ({"server": "h:1", "dropped": ["x"]}, "dropped"),
        ({"server": "h:1", "dropped": {}, "buffered": "many"}, "buffered"),
    ):
        answer = ingest.post("/api/v1/ingest/predictions/", {"events": [], **bad}, content_type="application/json")
        assert answer.status_code == 400 and field in answer.json(), answer.content


def test_admin_shows_health_and_settings_rows_read_only(deployment: Any, member: Any) -> None:
    from apps.monitoring.drift_settings import drift_settings_update
    from apps.monitoring.services import live_version

    drift_settings_update(deployment=deployment, actor=member, version=live_version(deployment), drift_share=0.7)
    heartbeat_task.delay()
    admin = get_user_model().objects.create_superuser("root", password="x")
    client = browser(admin)
    for model in ("driftsettings", "heartbeat", "taskmetric"):
        assert client.get(f"/admin/monitoring/{model}/").status_code == 200, model
        assert client.get(f"/admin/monitoring/{model}/add/").status_code == 403, model
    assert b"0.7" in client.get("/admin/monitoring/driftsettings/").content
