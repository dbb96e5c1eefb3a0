"""The approval flow in Chromium: an editor requests production, a second user approves, the stage shows it."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.registry import services
from apps.registry.models import PromotionRequest
from tests.registry.registry_helpers import sklearn_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def signed_in_page(browser: object, live_server: object, user: object, errors: list[str]) -> object:
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url, "secure": False}]
    )
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(f"{user}: {error}"))
    page.on("console", lambda message: errors.append(f"{user}: {message.text}") if message.type == "error" else None)
    return page


@pytest.fixture
def version(project: object, member: object, tmp_path: object) -> object:
    bundle = sklearn_bundle(tmp_path / "model.zip")
    return services.model_version_register(
        project=project, model_name="iris-classifier", bundle_path=bundle, actor=member
    )


def test_request_then_approve_by_a_second_user(browser, live_server, version, member, approver) -> None:
    errors: list[str] = []

    editor_page = signed_in_page(browser, live_server, member, errors)
    editor_page.goto(live_server.url + version.get_absolute_url())
    editor_page.wait_for_selector(".plot-lineage .main-svg", state="attached", timeout=15000)  # the graph drew
    editor_page.select_option("#id_target_stage", "production")
    editor_page.fill("#id_comment", "Ready for production.")
    editor_page.click("[data-testid=request-form] button[type=submit]")
    editor_page.wait_for_selector("[data-testid=request-status]")
    assert editor_page.inner_text("[data-testid=request-status]") == "Open"
    assert editor_page.locator("[data-testid=decision-form]").count() == 0  # four eyes

    approver_page = signed_in_page(browser, live_server, approver, errors)
    approver_page.goto(live_server.url + "/approvals/")
    assert approver_page.inner_text("[data-testid=nav-badge-approvals]") == "1"
    approver_page.click("[data-testid=inbox] a")
    approver_page.fill("#id_comment", "Approved.")
    approver_page.click("[data-testid=approve]")
    approver_page.wait_for_selector("text=Approved: iris-classifier v1 is now production")
    assert approver_page.inner_text("[data-testid=request-status]") == "Approved"
    assert approver_page.locator("[data-testid=nav-badge-approvals]").count() == 0

    approver_page.goto(live_server.url + version.model.get_absolute_url())
    assert approver_page.inner_text("[data-testid=stage-v1]") == "Production"
    assert PromotionRequest.objects.get().status == "approved"
    assert errors == []
