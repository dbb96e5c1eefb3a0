"""The A/B test API and pages as viewer, editor, approver, owner and outsider; bad input is a 4xx naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.abtests import services
from apps.abtests.models import ABTest
from apps.core.models import APIToken
from apps.deployments.models import Deployment
from tests.abtests.conftest import log_requests, make_test
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
API = "/api/v1/abtests/"


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def create_body(deployment: Deployment, v1: Any, v2: Any, **overrides: Any) -> dict[str, Any]:
    return {
        "deployment": deployment.pk,
        "name": "v2 vs v1",
        "control": v1.pk,
        "treatments": [v2.pk],
        "split": [50, 50],
        "primary_metric": "conversion",
        "mde": 0.05,
        "baseline": 0.3,
        "guardrails": [{"metric": "error_rate", "margin": 0.01}, {"metric": "p99_latency_ms", "margin": 50}],
        **overrides,
    }


def plant_lift(deployment: Deployment, abtest: ABTest, api: APIClient, n: int = 1_000) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    arms = log_requests(deployment, [f"user-{i}" for i in range(n)])
    items = [
        {"assignment_key": f"user-{i}", "conversion": int(rng.random() < (0.2, 0.5)[arm])}
        for i, arm in enumerate(arms.values())
    ]
    answer = api.post(f"{API}{abtest.pk}/outcomes/", items, format="json")
    assert answer.status_code == 200, answer.json()
    return answer.json()


@pytest.mark.parametrize("role", ["member", "approver", "owner"])
def test_api_lifecycle_for_editors_and_above(
    request: pytest.FixtureRequest, role: str, deployment: Deployment, v1: Any, v2: Any, approver: Any
) -> None:
    user = request.getfixturevalue(role)
    api = client_for(user)
    created = api.post(API, create_body(deployment, v1, v2), format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "draft" and [a["model_version"] for a in body["arms"]] == [v1.pk, v2.pk]
    assert body["planned_sample_size"] > 0
    pk = body["id"]
    assert api.get(f"{API}{pk}/readout/").status_code == 404
    started = api.post(f"{API}{pk}/start/", {}, format="json")
    assert started.status_code == 200 and started.json()["status"] == "running"
    abtest = ABTest.objects.get(pk=pk)
    result = plant_lift(deployment, abtest, api)
    assert result["stored"] == 1_000 and result["unknown"] == 0
    readout = api.post(f"{API}{pk}/readout/")
    assert readout.status_code == 201 and readout.json()["decision"] == "treatment wins"
    assert api.get(f"{API}{pk}/readout/").json()["id"] == readout.json()["id"]
    stopped = api.post(f"{API}{pk}/stop/", {}, format="json")
    assert stopped.status_code == 200 and stopped.json()["winner"] == v2.pk
    history = api.get(f"{API}{pk}/readouts/").json()
    assert [r["decision"] for r in history["results"]] == ["treatment wins", "treatment wins"]
    promoted = api.post(f"{API}{pk}/promote/", {"comment": "ship it"}, format="json")
    assert promoted.status_code == 201 and promoted.json()["version"] == v2.pk
    assert api.post(f"{API}{pk}/promote/", {}, format="json").status_code == 409


def test_api_reads_for_viewers_and_refusals(
    deployment: Deployment, abtest: ABTest, member: Any, viewer: Any, outsider: Any, v1: Any, v2: Any
) -> None:
    viewer_api, outsider_api = client_for(viewer), client_for(outsider)
    assert [t["id"] for t in viewer_api.get(API).json()["results"]] == [abtest.pk]
    assert viewer_api.get(f"{API}{abtest.pk}/").json()["name"] == abtest.name
    power = viewer_api.post(
        f"{API}power/",
        {"deployment": deployment.pk, "primary_metric": "conversion", "baseline": 0.3, "mde": 0.05},
        format="json",
    )
    assert power.status_code == 200 and power.json()["total"] == abtest.planned_sample_size
    writes = [
        (API, create_body(deployment, v1, v2)),
        (f"{API}{abtest.pk}/start/", {}),
        (f"{API}{abtest.pk}/stop/", {}),
        (f"{API}{abtest.pk}/readout/", {}),
        (f"{API}{abtest.pk}/outcomes/", []),
        (f"{API}{abtest.pk}/promote/", {}),
    ]
    for url, body in writes:
        assert viewer_api.post(url, body, format="json").status_code == 403, url
    assert outsider_api.get(API).json()["results"] == []
    for url in (f"{API}{abtest.pk}/", f"{API}{abtest.pk}/readout/", f"{API}{abtest.pk}/readouts/"):
        assert outsider_api.get(url).status_code == 404, url
    for url, body in writes[1:]:
        assert outsider_api.post(url, body, format="json").status_code == 404, url
    assert outsider_api.post(API, create_body(deployment, v1, v2), format="json").status_code == 404
    power_body = {"deployment": deployment.pk, "primary_metric": "conversion", "baseline": 0.3, "mde": 0.05}
    assert outsider_api.post(f"{API}power/", power_body, format="json").status_code == 404
    for query, field in (({"status": "paused"}, "status"), ({"deployment": "x"}, "deployment"), ({"nope": 1}, "nope")):
        answer = viewer_api.get(API, query)
        assert answer.status_code == 400 and field in answer.json()


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"split": [70, 40]}, "split", 400),
        ({"treatments": "CONTROL"}, "treatments", 400),
        ({"treatments": [999_999]}, "treatments", 400),
        ({"primary_metric": "clicks"}, "primary_metric", 400),
        ({"alpha": 0}, "alpha", 400),
        ({"baseline": 0.97}, "mde", 400),
        ({"guardrails": [{"metric": "cpu"}]}, "guardrails", 400),
        ({"deployment": 999_999}, "deployment", 404),
    ],
)
def test_api_create_bad_input_names_the_field(
    deployment: Deployment, member: Any, v1: Any, v2: Any, overrides: dict, field: str, code: int
) -> None:
    if overrides.get("treatments") == "CONTROL":
        overrides = {"treatments": [v1.pk]}
    answer = client_for(member).post(API, {**create_body(deployment, v1, v2), **overrides}, format="json")
    assert answer.status_code == code, answer.json()
    if code == 400:
        assert field in answer.json()
    assert not ABTest.objects.exists()


def test_api_conflicts(deployment: Deployment, abtest: ABTest, member: Any, v1: Any, v2: Any) -> None:
    api = client_for(member)
    assert api.post(f"{API}{abtest.pk}/stop/", {}, format="json").status_code == 409
    assert api.post(f"{API}{abtest.pk}/readout/").status_code == 409
    assert api.post(f"{API}{abtest.pk}/outcomes/", [], format="json").status_code == 409
    stale = api.post(f"{API}{abtest.pk}/start/", {"expected_generation": 0}, format="json")
    assert stale.status_code == 409 and ABTest.objects.get(pk=abtest.pk).status == "draft"
    assert api.post(f"{API}{abtest.pk}/start/", {}, format="json").status_code == 200
    other = make_test(deployment, member, v1, v2)
    assert api.post(f"{API}{other.pk}/start/", {}, format="json").status_code == 409
    bad_winner = api.post(f"{API}{abtest.pk}/stop/", {"winner": 999_999}, format="json")
    assert bad_winner.status_code == 400 and "winner" in bad_winner.json()
    assert api.post(f"{API}{abtest.pk}/outcomes/", {"not": "a list"}, format="json").status_code == 400
    api.delete(f"/api/v1/deployments/{deployment.pk}/")
    stopped = api.post(API, create_body(deployment, v1, v2), format="json")
    assert stopped.status_code == 409 and "deployment" in stopped.json()


def test_outcomes_with_a_personal_api_token(deployment: Deployment, running: ABTest, member: Any) -> None:
    APIToken.objects.create(user=member, name="outcomes", prefix="mlc_o", key_hash=APIToken.hash_key("mlc_outcomes"))
    log_requests(deployment, ["alice", "bob"])
    api = APIClient()
    items = [{"assignment_key": "alice", "conversion": 1}, {"assignment_key": "carol", "conversion": 0}]
    answer = api.post(f"{API}{running.pk}/outcomes/", items, format="json", HTTP_AUTHORIZATION="Bearer mlc_outcomes")
    assert answer.status_code == 200
    assert answer.json() | {"errors": []} == {
        "stored": 1,
        "replaced": 0,
        "unchanged": 0,
        "unknown": 1,
        "unknown_ids": ["carol"],
        "errors": [],
    }
    assert api.post(f"{API}{running.pk}/outcomes/", items, format="json").status_code in (401, 403)


def test_pages_by_role(
    deployment: Deployment,
    abtest: ABTest,
    member: Any,
    viewer: Any,
    approver: Any,
    owner: Any,
    outsider: Any,
    v1: Any,
    v2: Any,
) -> None:
    for user in (viewer, member, approver, owner):
        page = browser(user)
        listing = page.get("/abtests/")
        assert listing.status_code == 200 and abtest.name in listing.content.decode()
        detail = page.get(f"/abtests/{abtest.pk}/")
        assert detail.status_code == 200 and "Not started" in detail.content.decode()
        assert ("abtest-start" in detail.content.decode()) == (user != viewer)
    outsider_page = browser(outsider)
    assert abtest.name not in outsider_page.get("/abtests/").content.decode()
    assert outsider_page.get(f"/abtests/{abtest.pk}/").status_code == 404
    assert outsider_page.get(f"/abtests/new/?deployment={deployment.pk}").status_code == 404
    for action in ("start", "stop", "readout", "promote"):
        assert outsider_page.post(f"/abtests/{abtest.pk}/{action}/").status_code == 404
        assert browser(viewer).post(f"/abtests/{abtest.pk}/{action}/").status_code == 403
    assert browser(viewer).get(f"/abtests/new/?deployment={deployment.pk}").status_code == 403
    assert browser(viewer).get("/abtests/?status=paused").status_code == 400


def test_pages_create_with_the_power_calculator_then_run_and_read(
    deployment: Deployment, member: Any, v1: Any, v2: Any
) -> None:
    page = browser(member)
    url = f"/abtests/new/?deployment={deployment.pk}"
    assert "Power calculator" in page.get(url).content.decode()
    form = {
        "name": "page test",
        "control": v1.pk,
        "treatments": [v2.pk],
        "split": "50,50",
        "primary_metric": "conversion",
        "baseline": "0.3",
        "mde": "0.05",
        "alpha": "0.05",
        "power": "0.8",
        "sequential": "on",
        "error_rate_margin": "0.01",
        "assignment_key": "header",
    }
    calculated = page.post(url, {**form, "calculate": "1"})
    assert calculated.status_code == 200 and 'data-testid="power-plan"' in calculated.content.decode()
    assert not ABTest.objects.exists()
    bad = page.post(url, {**form, "split": "50,60"})
    assert bad.status_code == 400 and "sum to 100" in bad.content.decode()
    same = page.post(url, {**form, "treatments": [v1.pk]})
    assert same.status_code == 400 and "must not be the control" in same.content.decode()
    created = page.post(url, form)
    abtest = ABTest.objects.get()
    assert created.status_code == 302 and created["Location"] == abtest.get_absolute_url()
    assert abtest.guardrails == [{"metric": "error_rate", "margin": 0.01}]
    assert page.post(f"/abtests/{abtest.pk}/start/").status_code == 302
    plant_lift(deployment, abtest, client_for(member))
    assert page.post(f"/abtests/{abtest.pk}/readout/").status_code == 302
    detail = page.get(abtest.get_absolute_url()).content.decode()
    assert 'data-testid="abtest-lift-chart"' in detail and "no SRM" in detail and "treatment wins" in detail
    assert "Promote the winner" in detail
    assert page.post(f"/abtests/{abtest.pk}/stop/").status_code == 302
    promoted = page.post(f"/abtests/{abtest.pk}/promote/")
    assert (
        promoted.status_code == 302
        and promoted["Location"] == abtest_after(abtest).promotion_request.get_absolute_url()
    )


def test_srm_is_shown_in_red(deployment: Deployment, running: ABTest, member: Any) -> None:
    log_requests(deployment, [f"u{i}" for i in range(2_000)], weights=(60, 40))
    services.abtest_readout_compute(abtest=running, actor=member)
    detail = browser(member).get(running.get_absolute_url()).content.decode()
    assert 'data-testid="srm-alert"' in detail and "text-bg-danger" in detail and "readout invalid" in detail


def abtest_after(abtest: ABTest) -> ABTest:
    return ABTest.objects.select_related("promotion_request").get(pk=abtest.pk)
