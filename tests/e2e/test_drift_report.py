"""In Chromium, with a real Celery worker: an editor checks drift from the deployment page, the report page
follows the job until it finishes, and its table and charts render with no JavaScript error."""

from __future__ import annotations

from typing import Any

import pytest

from apps.monitoring.models import DriftReport
from tests.e2e.conftest import browser_login, draw_all_plots, screenshot
from tests.monitoring.conftest import deployment, log_traffic, training_version  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TIMEOUT_MS = 60_000


def test_an_editor_checks_drift_and_reads_the_report(
    live_server: Any,
    page: Any,
    js_errors: list[str],
    celery_worker: Any,
    deployment: Any,  # noqa: F811
    member: Any,
) -> None:
    log_traffic(deployment, rows=400, drifted=True)
    browser_login(page, live_server, member)
    page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    page.select_option("[data-testid=deployment-drift] select[name=window]", "24h")
    page.click("[data-testid=deployment-drift-run]")
    page.wait_for_url(f"{live_server.url}/monitoring/drift/*/")
    report = DriftReport.objects.get()
    assert page.url.endswith(report.get_absolute_url())
    # The page reloads itself while the job is queued or running.
    page.wait_for_selector("[data-testid=drift-status]:text('succeeded')", timeout=TIMEOUT_MS)
    assert page.locator("[data-testid=drift-column-table] tbody tr").count() == 2
    assert "2 of 2 columns" in page.locator("[data-testid=drift-share]").inner_text()
    draw_all_plots(page)
    assert page.locator("[data-testid=drift-histogram] .main-svg").count() >= 2
    assert page.locator("[data-testid=drift-share-chart] .main-svg").count() >= 1
    assert screenshot(page, "drift-report", width=1366, height=800).stat().st_size > 0
    assert js_errors == []
