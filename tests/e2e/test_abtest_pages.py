"""In Chromium: an editor plans an A/B test with the power calculator, creates and starts it, computes a readout of
the traffic it got, and reads the decision, the SRM badge and the cumulative-lift chart, with no JavaScript error.
No model server: the traffic goes through telemetry's ingest service (tests/abtests/conftest.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from apps.abtests import services
from apps.abtests.models import ABTest
from apps.deployments.services import _common, commands
from tests.abtests.conftest import deployment, log_requests, model, v1, v2  # noqa: F401 (fixtures)
from tests.e2e.conftest import browser_login, draw_all_plots, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def no_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services queue the reconciler once they commit; no model server is wanted here."""
    monkeypatch.setattr(_common, "_queue_reconcile", lambda _: None)
    monkeypatch.setattr(commands, "_queue_reconcile", lambda _: None)


def test_an_editor_plans_starts_and_reads_an_abtest(
    live_server: Any,
    page: Any,
    js_errors: list[str],
    deployment: Any,  # noqa: F811
    member: Any,
    v1: Any,  # noqa: F811
    v2: Any,  # noqa: F811
) -> None:
    browser_login(page, live_server, member)
    page.goto(f"{live_server.url}/abtests/")
    page.click("[data-testid=abtest-new]")
    page.fill("#id_name", "v2 against v1")
    page.select_option("#id_control", str(v1.pk))
    page.select_option("#id_treatments", [str(v2.pk)])
    page.select_option("#id_primary_metric", "conversion")
    page.fill("#id_baseline", "0.3")
    page.fill("#id_mde", "0.05")
    page.click("[data-testid=abtest-calculate]")
    total = page.locator("[data-testid=power-total]").inner_text()
    assert "units" in total
    page.click("[data-testid=abtest-create]")
    abtest = ABTest.objects.get()
    page.wait_for_url(f"{live_server.url}{abtest.get_absolute_url()}")
    assert total.replace(",", "").startswith(str(abtest.planned_sample_size))
    page.click("[data-testid=abtest-start]")
    page.wait_for_selector("[data-testid=abtest-status]:text('running')")
    rng = np.random.default_rng(5)
    arms = log_requests(deployment, [f"user-{i}" for i in range(2_000)])
    items = [{"request_id": rid, "conversion": int(rng.random() < (0.2, 0.4)[arm])} for rid, arm in arms.items()]
    services.abtest_outcomes_record(abtest=abtest, actor=member, items=items)
    for _ in range(2):
        page.click("[data-testid=abtest-refresh]")
        page.wait_for_selector("[data-testid=abtest-decision]")
    assert page.locator("[data-testid=abtest-decision]").inner_text() == "treatment wins"
    assert "no SRM" in page.locator("[data-testid=srm-badge]").inner_text()
    assert page.locator("[data-testid=abtest-arms] tbody tr").count() == 2
    draw_all_plots(page)
    assert page.locator("[data-testid=abtest-lift-chart] .main-svg").count() >= 1
    assert page.locator("[data-testid=abtest-promote]").count() == 1
    assert screenshot(page, "abtest-readout", width=1366, height=900).stat().st_size > 0
    assert js_errors == []
