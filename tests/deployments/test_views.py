"""The deployment pages as owner, editor, viewer and outsider."""

from __future__ import annotations

import html
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.deployments import services, views
from apps.deployments.models import Deployment
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db

# What the reconciler records: a canary analysis decision, and a replica it observed.
DECISION = {
    "percent": 10,
    "action": "hold",
    "reason": "error rate 20.00% vs stable 0.00%",
    "numbers": {
        "stable": {"requests": 90, "errors": 0, "p99_ms": 2.0},
        "canary": {"requests": 10, "errors": 2, "p99_ms": 3.0},
    },
}
REPLICA = {"replica": 0, "url": "http://127.0.0.1:18080", "health": "ready", "pid": 4242, "traffic": {}}


@pytest.fixture
def deployment(project: Any, owner: Any) -> Deployment:
    model = RegisteredModelFactory(project=project, name="iris")
    versions = [ModelVersionFactory(model=model, number=n) for n in (1, 2)]
    deployment = services.deployment_create(project=project, name="iris", actor=owner, model_version=versions[0])
    services.deployment_rollout(
        deployment=deployment, model_version=versions[1], strategy="canary", actor=owner, traffic_percentage=10
    )
    deployment.refresh_from_db()
    deployment.strategy_state["decisions"] = [DECISION]
    deployment.save()
    return deployment


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def list_queries(user: Any) -> int:
    client = browser(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("deployments:deployment-list")).status_code == 200
    return len(queries)


def test_list_queries_do_not_grow_with_deployments(deployment: Deployment, owner: Any, viewer: Any) -> None:
    one = list_queries(viewer)
    for name in ("iris-b", "iris-c"):
        version = deployment.registered_model.versions.first()
        services.deployment_create(project=deployment.project, name=name, actor=owner, model_version=version)
    assert list_queries(viewer) == one


def test_list_and_detail_by_role(deployment: Deployment, owner: Any, viewer: Any, outsider: Any) -> None:
    listing = browser(viewer).get(reverse("deployments:deployment-list"))
    assert listing.status_code == 200 and b"iris" in listing.content
    assert b"iris" not in browser(outsider).get(reverse("deployments:deployment-list")).content
    detail = browser(viewer).get(deployment.get_absolute_url())
    assert detail.status_code == 200
    page = detail.content.decode()
    assert 'data-testid="canary-decisions"' in page and "error rate 20.00%" in page
    assert "/static/vendor/plotly/plotly.min." in page and "cdn" not in page.lower()
    assert 'data-testid="promote"' not in page, "viewers see no buttons"
    assert 'data-testid="promote"' in browser(owner).get(deployment.get_absolute_url()).content.decode()
    assert browser(outsider).get(deployment.get_absolute_url()).status_code == 404


def test_actions_by_role(deployment: Deployment, member: Any, viewer: Any, outsider: Any) -> None:
    url = reverse("deployments:deployment-scale", args=[deployment.pk])
    data = {"generation": deployment.generation, "replicas": 3}
    assert browser(viewer).post(url, data).status_code == 403
    assert browser(outsider).post(url, data).status_code == 404
    assert browser(member).post(url, data).status_code == 302
    deployment.refresh_from_db()
    assert deployment.replicas == 3
    stale = browser(member).post(url, {"generation": 1, "replicas": 2}, follow=True)
    assert "changed" in stale.content.decode()
    promote = reverse("deployments:deployment-promote", args=[deployment.pk])
    assert browser(member).post(promote, {"generation": deployment.generation}).status_code == 302
    deployment.refresh_from_db()
    assert deployment.strategy_state["step"] == 1
    rollback = reverse("deployments:deployment-rollback", args=[deployment.pk])
    browser(member).post(rollback, {"generation": deployment.generation})
    deployment.refresh_from_db()
    assert deployment.phase == "rolled_back"


def test_a_refused_action_goes_back_to_the_page_with_the_reason(deployment: Deployment, member: Any) -> None:
    client = browser(member)
    page = "http://testserver" + deployment.get_absolute_url()
    url = reverse("deployments:deployment-promote", args=[deployment.pk])
    stale = client.post(url, {"generation": deployment.generation - 1}, HTTP_REFERER=page)
    assert stale.status_code == 302 and stale["Location"] == page
    shown = client.get(page).content.decode()
    assert f"it is at generation {deployment.generation}" in shown and "Reload it and try again." in shown
    deployment.refresh_from_db()
    assert deployment.strategy_state["step"] == 0, "nothing changed"


def test_try_it_without_a_ready_replica_and_manifests(deployment: Deployment, viewer: Any) -> None:
    response = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]), {"body": "{}", "protocol": "mlflow"}
    )
    assert response.status_code == 409 and "No replica is ready" in response.content.decode()
    bad = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]), {"body": "{", "protocol": "v2"}
    )
    assert bad.status_code == 400 and "Not valid JSON" in bad.content.decode()
    manifests = browser(viewer).get(reverse("deployments:deployment-manifests", args=[deployment.pk]))
    assert manifests.status_code == 200 and b"kind: Deployment" in manifests.content


class _ModelServer(BaseHTTPRequestHandler):
    """Answers predictions the way a model server does: JSON, with the serving version's id in a header."""

    version_id = ""
    request_ids: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.request_ids.append(self.headers.get("X-Request-Id"))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps({"path": self.path, "predictions": [len(body.get("instances", []))]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Model-Version", self.version_id)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the answer, not the server's access log."""

    @staticmethod
    def request_ids_of(url: str) -> list[str | None]:
        return _SERVERS[url].RequestHandlerClass.request_ids


_SERVERS: dict[str, ThreadingHTTPServer] = {}


@pytest.fixture
def model_server(deployment: Deployment) -> Iterator[str]:
    canary = deployment.registered_model.versions.get(number=2)
    handler = type("Handler", (_ModelServer,), {"version_id": str(canary.pk), "request_ids": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _SERVERS[url] = server
    yield url
    del _SERVERS[url]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("protocol", "path"), [("mlflow", "/invocations"), ("v2", "/v2/models/iris/infer")])
def test_try_it_shows_the_model_servers_answer(
    deployment: Deployment, viewer: Any, model_server: str, protocol: str, path: str
) -> None:
    observe(deployment, observed={"replicas": [{**REPLICA, "url": model_server}]})
    response = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]),
        {"body": '{"instances": [[1, 2], [3, 4]]}', "protocol": protocol},
    )
    assert response.status_code == 200
    answer = response.context["answer"]
    assert answer.status == 200 and answer.version == "v2" and answer.url == model_server + path
    assert answer.body == {"path": path, "predictions": [2]}
    assert f"HTTP 200 from v2 ({model_server}{path})" in response.content.decode()


def test_try_it_passes_the_request_id_on_to_the_model_server(
    deployment: Deployment, viewer: Any, model_server: str
) -> None:
    """The model server logs its prediction event under the console's request id (serving's own tests check that
    an incoming X-Request-Id becomes the event's request_id)."""
    observe(deployment, observed={"replicas": [{**REPLICA, "url": model_server}]})
    url = reverse("deployments:deployment-try", args=[deployment.pk])
    form = {"body": '{"instances": [[1, 2]]}', "protocol": "mlflow"}
    given = browser(viewer).post(url, form, HTTP_X_REQUEST_ID="ci-job-42-predict")
    generated = browser(viewer).post(url, form)
    seen = _ModelServer.request_ids_of(model_server)
    assert given["X-Request-Id"] == "ci-job-42-predict"
    assert seen == ["ci-job-42-predict", generated["X-Request-Id"]]


def test_try_it_when_the_model_server_does_not_answer(deployment: Deployment, viewer: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    observe(deployment, observed={"replicas": [{**REPLICA, "url": f"http://127.0.0.1:{port}"}]})
    response = browser(viewer).post(
        reverse("deployments:deployment-try", args=[deployment.pk]), {"body": "{}", "protocol": "mlflow"}
    )
    assert response.status_code == 502 and "The model server did not answer" in response.content.decode()


# The live part of the page: served alone for htmx to poll, and included in the full page.


def live_url(deployment: Deployment) -> str:
    return reverse("deployments:deployment-live", args=[deployment.pk])


def observe(deployment: Deployment, **fields: Any) -> None:
    """Write what the reconciler writes after observing the backend."""
    Deployment.objects.filter(pk=deployment.pk).update(observed_at=timezone.now(), **fields)


def hx_headers(page: str) -> dict[str, str]:
    match = re.search(r'id="deployment-live"[^>]* hx-headers="([^"]*)"', page)
    assert match, "the live part polls with its ETag"
    return json.loads(html.unescape(match.group(1)))


def test_live_part_shows_the_current_state(deployment: Deployment, viewer: Any) -> None:
    client = browser(viewer)
    before = client.get(live_url(deployment))
    assert before.status_code == 200
    assert {"deployments/_deployment_live.html", "deployments/_deployment_live_sections.html"} <= {
        t.name for t in before.templates
    }
    page = before.content.decode()
    assert "<html" not in page and page.lstrip().startswith('<div id="deployment-live"')
    assert "v1: 90%" in page and "v2: 10%" in page
    assert "Nothing observed yet." in page and "error rate 20.00%" in page
    assert f'hx-trigger="every {views.LIVE_POLL_SECONDS}s"' in page

    observe(deployment, status="healthy", observed={"replicas": [REPLICA]})
    services.deployment_note(deployment=deployment, message="The disk is almost full.")
    page = client.get(live_url(deployment)).content.decode()
    assert 'data-testid="replica-table"' in page and "pid 4242" in page and "http://127.0.0.1:18080" in page
    assert "The disk is almost full." in page
    assert "Healthy" in page and "curl -s -X POST http://127.0.0.1:18080/invocations" in page
    assert 'data-testid="endpoint"' not in page, "no endpoint observed: the ready replica's address"

    v1, v2 = deployment.targets.order_by("model_version__number").values_list("model_version_id", flat=True)
    serving = {**REPLICA, "traffic": {str(v1): 90, str(v2): 10}, "shadow": str(v2)}
    observe(deployment, observed={"endpoint": "http://127.0.0.1:18000", "replicas": [serving]})
    page = client.get(live_url(deployment)).content.decode()
    assert "v1: 90% v2: 10% shadow v2" in page, "the replica's split in version numbers, not ids"
    assert '<code data-testid="endpoint">http://127.0.0.1:18000</code>' in page
    assert "curl -s -X POST http://127.0.0.1:18000/invocations" in page


def test_live_part_by_role(deployment: Deployment, owner: Any, member: Any, outsider: Any) -> None:
    assert browser(outsider).get(live_url(deployment)).status_code == 404
    anonymous = Client().get(live_url(deployment))
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    assert 'data-testid="promote"' in browser(member).get(live_url(deployment)).content.decode()


def test_unchanged_live_part_answers_304_and_no_swap(deployment: Deployment, owner: Any) -> None:
    client = browser(owner)
    first = client.get(live_url(deployment))
    etag = first["ETag"]
    # The owner's part holds the promote and rollback forms, whose masked CSRF tokens differ on every render.
    assert 'name="csrfmiddlewaretoken"' in first.content.decode()
    assert hx_headers(first.content.decode()) == {"If-None-Match": etag}
    assert hx_headers(client.get(deployment.get_absolute_url()).content.decode()) == {"If-None-Match": etag}

    unchanged = client.get(live_url(deployment), HTTP_IF_NONE_MATCH=etag)
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged["HX-Reswap"] == "none" and unchanged["ETag"] == etag

    services.deployment_note(deployment=deployment, message="Something happened.")
    changed = client.get(live_url(deployment), HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and "HX-Reswap" not in changed
    assert "Something happened." in changed.content.decode()


def test_polling_stops_once_the_deployment_is_settled(deployment: Deployment, owner: Any) -> None:
    client = browser(owner)
    observe(deployment, status="failed", observed={"replicas": [{**REPLICA, "health": "dead"}]})
    assert "hx-trigger=" in client.get(live_url(deployment)).content.decode(), "the reconciler retries a failure"

    services.deployment_stop(deployment=deployment, actor=owner)
    stopping = client.get(live_url(deployment))
    assert "hx-trigger=" in stopping.content.decode(), "its servers still run until the next reconcile"

    observe(deployment, observed={})
    settled = client.get(live_url(deployment), HTTP_IF_NONE_MATCH=stopping["ETag"])
    assert settled.status_code == 200, "the part without the trigger is sent even when nothing else changed"
    assert "hx-trigger=" not in settled.content.decode() and "hx-get=" not in settled.content.decode()
    assert "hx-trigger=" not in client.get(deployment.get_absolute_url()).content.decode()


def test_detail_page_includes_the_live_part_and_keeps_forms_outside(deployment: Deployment, owner: Any) -> None:
    client = browser(owner)
    page = client.get(deployment.get_absolute_url()).content.decode()
    assert page.count('id="deployment-live"') == 1
    assert f'hx-get="{live_url(deployment)}"' in page
    assert 'data-testid="canary-decisions"' in page and 'data-testid="event-list"' in page
    assert "/static/deployments/charts." in page and "/static/deployments/live." in page
    live = client.get(live_url(deployment)).content.decode()
    for form in ("deployment-try", "deployment-scale", "deployment-rollout"):
        action = reverse(f"deployments:{form}", args=[deployment.pk])
        assert f'action="{action}"' in page and f'action="{action}"' not in live, form
    assert "data-hidden-during-rollout hidden" in page, "a canary is in progress"


def test_live_part_keeps_the_page_of_events(deployment: Deployment, owner: Any) -> None:
    for n in range(views.EVENTS_PAGE_SIZE):
        services.deployment_note(deployment=deployment, message=f"note {n}")
    client = browser(owner)
    page = client.get(deployment.get_absolute_url() + "?page=2").content.decode()
    assert f'hx-get="{live_url(deployment)}?page=2"' in page
    live = client.get(live_url(deployment) + "?page=2").content.decode()
    assert "Page 2 of 2" in live and "note 29" not in live and "Created" in live


def test_promote_from_the_live_part_with_its_csrf_token(deployment: Deployment, member: Any, viewer: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    live = client.get(live_url(deployment)).content.decode()
    form = re.search(r'<form method="post" action="([^"]+/promote/)">(.*?)</form>', live, re.S)
    assert form, "editors get the promote button in the live part"
    fields = dict(re.findall(r'name="(csrfmiddlewaretoken|generation)" value="([^"]*)"', form.group(2)))
    assert fields["generation"] == str(deployment.generation)
    assert client.post(form.group(1), {"generation": fields["generation"]}).status_code == 403, "no CSRF token"
    assert client.post(form.group(1), fields).status_code == 302
    deployment.refresh_from_db()
    assert deployment.strategy_state["step"] == 1
    assert 'data-testid="promote"' not in browser(viewer).get(live_url(deployment)).content.decode()


def test_stop_and_start_from_the_page(deployment: Deployment, member: Any, viewer: Any) -> None:
    detail = reverse("deployments:deployment-detail", args=[deployment.pk])
    stop = reverse("deployments:deployment-stop", args=[deployment.pk])
    start = reverse("deployments:deployment-start", args=[deployment.pk])
    assert browser(viewer).post(stop, {"generation": deployment.generation}).status_code == 403
    page = browser(member).post(stop, {"generation": deployment.generation}, follow=True).content.decode()
    deployment.refresh_from_db()
    assert deployment.status == "stopped" and "Stopped; its model servers are shutting down." in page
    # Stopped: a Start button, no Stop, no promote or roll back, no scale or roll-out forms, nothing "applying".
    assert 'data-testid="start"' in page and 'data-testid="stop"' not in page
    assert 'data-testid="promote"' not in page and 'data-testid="rollback"' not in page
    assert 'data-testid="scale"' not in page and "(applying)" not in page
    scale = reverse("deployments:deployment-scale", args=[deployment.pk])
    refused = browser(member).post(scale, {"generation": deployment.generation, "replicas": 3}, follow=True)
    assert "is stopped; start it first" in refused.content.decode()
    deployment.refresh_from_db()
    assert deployment.replicas == 1
    page = browser(member).post(start, {"generation": deployment.generation}, follow=True).content.decode()
    deployment.refresh_from_db()
    assert deployment.status == "progressing" and 'data-testid="stop"' in browser(member).get(detail).content.decode()
    assert deployment.events.filter(kind="started").count() == 1
