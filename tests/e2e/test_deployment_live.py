"""In Chromium: a deployment's page follows a canary as it changes, without a reload.

No model server and no reconciler run: the test writes what the reconciler would (observed replicas,
decisions, events, status) and changes the desired state through the services, as another editor would.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from apps.deployments import services, views
from apps.deployments.choices import DeploymentEventKind, DeploymentStatus
from apps.deployments.models import Deployment, DeploymentEvent
from apps.deployments.services import _common, commands
from tests.deployments.test_views import DECISION, REPLICA
from tests.e2e.conftest import browser_login
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

POLL_SECONDS = 1
TIMEOUT_MS = 15_000
# From here on, the page records the status of every poll htmx makes, and counts the redraws of its charts.
WATCH = """() => {
  window.polls = [];
  document.body.addEventListener("htmx:afterRequest", (event) => window.polls.push(event.detail.xhr.status));
  window.redraws = 0;
  const react = Plotly.react;
  Plotly.react = function () { window.redraws += 1; return react.apply(this, arguments); };
}"""


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "LIVE_POLL_SECONDS", POLL_SECONDS)


@pytest.fixture(autouse=True)
def no_reconciler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services queue the reconciler once they commit; here the test plays its part."""
    monkeypatch.setattr(_common, "_queue_reconcile", lambda deployment: None)
    monkeypatch.setattr(commands, "_queue_reconcile", lambda deployment: None)


def reconciler_writes(deployment: Deployment, **fields: Any) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(observed_at=timezone.now(), **fields)


def current(deployment: Deployment) -> Deployment:
    deployment.refresh_from_db()
    return deployment


def test_the_page_follows_a_canary_without_a_reload(
    live_server: object, page: Any, js_errors: list[str], project: object, owner: object, member: object
) -> None:
    model = RegisteredModelFactory(project=project, name="iris")
    stable, canary = (ModelVersionFactory(model=model, number=n) for n in (1, 2))
    deployment = services.deployment_create(project=project, name="iris-live", actor=owner, model_version=stable)
    services.deployment_rollout(
        deployment=deployment, model_version=canary, strategy="canary", actor=owner, traffic_percentage=10
    )
    browser_login(page, live_server, member)
    page.goto(f"{live_server.url}{deployment.get_absolute_url()}")
    page.wait_for_selector("#traffic-plot .main-svg")
    page.evaluate("window.notReloaded = true")
    page.evaluate(WATCH)
    traffic_plot = page.locator("#traffic-plot").element_handle()
    page.fill("#id_body", '{"typed": "by hand"}')
    assert page.locator("[data-testid=rollout-card]").is_hidden(), "a rollout is in progress"

    # Nothing changes: the polls are answered 304 and nothing is redrawn.
    page.wait_for_function("window.polls.filter((status) => status === 304).length >= 2", timeout=TIMEOUT_MS)
    assert set(page.evaluate("window.polls")) == {304} and page.evaluate("window.redraws") == 0

    # The reconciler finds a ready replica and holds the canary after its first window.
    reconciler_writes(
        deployment,
        status=DeploymentStatus.PROGRESSING,
        observed={"replicas": [REPLICA]},
        strategy_state={**current(deployment).strategy_state, "decisions": [DECISION]},
    )
    DeploymentEvent.objects.create(
        deployment=deployment, kind=DeploymentEventKind.CANARY_DECISION, message="Hold: error rate 20.00%."
    )
    page.wait_for_selector("[data-testid=replica-table] >> text=pid 4242", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-testid=event-list] >> text=Hold: error rate 20.00%.", timeout=TIMEOUT_MS)
    page.wait_for_selector("#canary-plot .main-svg", timeout=TIMEOUT_MS)
    assert page.locator("[data-testid=canary-decisions]").inner_text().count("hold") == 1
    assert page.evaluate("window.redraws") == 1, "the canary chart is drawn; the traffic chart is unchanged"

    # Another editor promotes the canary to its next step: the traffic chart is redrawn in place.
    services.deployment_promote(deployment=deployment, actor=owner, expected_generation=current(deployment).generation)
    page.wait_for_selector("[data-testid=traffic] >> text=v2: 25%", timeout=TIMEOUT_MS)
    page.wait_for_function("document.getElementById('traffic-plot').data.some(trace => trace.x[0] === 25)")
    assert traffic_plot.evaluate("element => element === document.getElementById('traffic-plot')")
    assert page.evaluate("window.redraws") == 2, "only the traffic chart changed"
    assert page.locator("[data-testid=generation]").inner_text() == f"generation {current(deployment).generation}"

    # Promoted to 100%: the rollout is done and the rollout form shows again.
    for _ in range(2):
        services.deployment_promote(
            deployment=deployment, actor=owner, expected_generation=current(deployment).generation
        )
    page.wait_for_selector("[data-testid=rollout-phase] >> text=Done", timeout=TIMEOUT_MS)
    page.wait_for_selector("[data-testid=rollout-card]", state="visible")
    assert page.locator("[data-testid=promote]").count() == 0
    assert page.evaluate("window.notReloaded") is True
    assert page.input_value("#id_body") == '{"typed": "by hand"}', "what one typed survives the swaps"

    # The scale form, outside the live part, posts the generation the page shows now.
    page.fill("#id_replicas", "2")
    page.click("[data-testid=scale]")
    page.wait_for_selector(".alert >> text=Scaling to 2 replicas.")
    assert current(deployment).replicas == 2

    # Stopped, and once its servers are gone, the page stops asking.
    page.evaluate(WATCH)
    services.deployment_stop(deployment=deployment, actor=owner)
    page.wait_for_selector("[data-testid=deployment-status] >> text=Stopped", timeout=TIMEOUT_MS)
    assert page.locator("#deployment-live[hx-trigger]").count() == 1, "its servers still run"
    reconciler_writes(deployment, observed={})
    page.wait_for_selector("[data-testid=replica-table]", state="detached", timeout=TIMEOUT_MS)
    assert page.locator("#deployment-live[hx-trigger]").count() == 0
    assert 200 in page.evaluate("window.polls")
    page.evaluate("window.polls = []")
    page.wait_for_timeout(3_000 * POLL_SECONDS)
    assert page.evaluate("window.polls") == []
    assert js_errors == []
