"""In Chromium, with a real Celery worker on Redis: staff see the worker answer on the system health page and
its heartbeat task arrive; an editor sets a per-column drift test on the settings page. No JavaScript error."""

from __future__ import annotations

from typing import Any

import pytest

from apps.monitoring.models import DriftSettings, Heartbeat, TaskMetric
from apps.monitoring.tasks import heartbeat_task
from tests.e2e.conftest import browser_login, screenshot, wait_for
from tests.factories import UserFactory
from tests.monitoring.conftest import deployment, training_version  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_staff_see_the_worker_and_its_heartbeat(
    live_server: Any,
    page: Any,
    js_errors: list[str],
    celery_worker: Any,
    deployment: Any,  # noqa: F811
) -> None:
    staff = UserFactory(username="operator", is_staff=True)
    browser_login(page, live_server, staff)
    page.goto(f"{live_server.url}/monitoring/health/")
    workers = page.locator("[data-testid=health-workers]")
    assert f"{celery_worker.queue}@" in workers.inner_text()
    assert "problem" not in page.locator("[data-testid=health-database]").inner_text()
    assert page.locator("[data-deployment=iris]").count() == 1
    heartbeat_task.delay()
    wait_for(lambda: Heartbeat.objects.filter(name="worker").exists(), timeout=30, what="the worker's heartbeat task")
    page.reload()
    assert "on " in workers.locator("text=Heartbeat task last run").inner_text()
    # The worker counted the run for /metrics (its task signals write to the shared database).
    wait_for(
        lambda: TaskMetric.objects.filter(task="monitoring.heartbeat", outcome="success").exists(),
        timeout=10,
        what="the worker's count of the heartbeat task",
    )
    assert screenshot(page, "system-health", width=1366, height=800).stat().st_size > 0
    assert js_errors == []


def test_an_editor_sets_a_drift_test_per_column(
    live_server: Any,
    page: Any,
    js_errors: list[str],
    deployment: Any,  # noqa: F811
    member: Any,
) -> None:
    browser_login(page, live_server, member)
    page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    page.click("[data-testid=drift-settings-link]")
    page.select_option("select[name='test:x']", "psi")
    page.fill("input[name='threshold:x']", "0.25")
    page.click("[data-testid=drift-settings-save]")
    page.wait_for_selector("text=Drift settings saved")
    assert DriftSettings.objects.get(deployment=deployment).columns == {"x": {"test": "psi", "threshold": 0.25}}
    assert js_errors == []
    page.fill("input[name='threshold:x']", "lots")
    page.click("[data-testid=drift-settings-save]")
    assert "columns.x.threshold" in page.locator("[data-testid=drift-settings-error]").inner_text()
    # The refused form comes back with status 400, which Chromium logs as a failed load, and nothing else.
    assert js_errors == [
        "console.error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]
