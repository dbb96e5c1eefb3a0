"""In Chromium: a viewer opens a deployment's dashboard (from the deployment page), sees its charts drawn and the
figures update live when new predictions are logged; then the performance page with labels, the estimate and a
drift report; all with no JavaScript error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.monitoring import services
from tests.e2e.conftest import browser_login, draw_all_plots, screenshot
from tests.monitoring.conftest import deployment, log_traffic, training_version  # noqa: F401 (fixtures)
from tests.monitoring.test_dashboard import ingest
from tests.monitoring.test_performance_page import labelled  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIVE_TIMEOUT_MS = 40_000


def test_dashboard_and_performance_pages_draw_and_update(
    live_server: Any,
    page: Any,
    js_errors: list[str],
    deployment: Any,  # noqa: F811
    labelled: Any,  # noqa: F811
    member: Any,
    viewer: Any,
) -> None:
    log_traffic(deployment, rows=400, drifted=True, start=timezone.now() - timedelta(minutes=40))
    services.check_data_drift(deployment=deployment, actor=member, window=timedelta(hours=1))
    browser_login(page, live_server, viewer)
    page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    page.click("[data-testid=dashboard-link]")
    page.wait_for_url(f"{live_server.url}/monitoring/deployments/{deployment.pk}/")
    page.click("[data-testid=window-1h]")
    page.wait_for_url("**/?window=1h")
    draw_all_plots(page)
    for chart in ("throughput", "errors", "latency", "distribution"):
        assert page.locator(f"[data-testid=chart-{chart}] .main-svg").count() >= 1, chart
    requests = page.locator("[data-testid=dashboard-table] tbody tr td:nth-child(2)")
    assert requests.first.inner_text() == "420"  # 400 labelled-fixture requests and 20 drift-traffic events

    version = deployment.targets.get().model_version
    ingest(
        deployment,
        [
            {
                "request_id": f"late-{i}",
                "deployment_id": deployment.pk,
                "version_id": version.pk,
                "outputs": ["a"],
                "latency_ms": 4.0,
                "status": 200,
                "timestamp": timezone.now().isoformat(),
            }
            for i in range(30)
        ],
    )
    # The live part polls every 10 s and swaps the new figures in, the charts kept and redrawn in place.
    page.wait_for_function(
        "document.querySelector('[data-testid=dashboard-table] tbody tr td:nth-child(2)').innerText === '450'",
        timeout=LIVE_TIMEOUT_MS,
    )
    draw_all_plots(page)
    assert screenshot(page, "monitoring-dashboard", width=1366, height=800).stat().st_size > 0

    page.click("[data-testid=performance-link]")
    page.wait_for_url(f"**/monitoring/deployments/{deployment.pk}/performance/?window=1h")
    assert "300 of 450 predictions labelled" in page.locator("[data-testid=labelled-count]").first.inner_text()
    assert page.locator("[data-testid=cbpe-assumptions]").is_visible()
    draw_all_plots(page)
    for chart in ("accuracy", "predictions", "drift-columns"):
        assert page.locator(f"[data-testid=chart-{chart}] .main-svg").count() >= 1, chart
    assert screenshot(page, "monitoring-performance", width=1366, height=800).stat().st_size > 0
    assert js_errors == []
