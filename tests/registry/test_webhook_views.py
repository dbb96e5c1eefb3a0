"""The Webhooks and Slack pages: owners add and delete, members see, outsiders get 404; a Slack URL is only
ever shown masked, also when the form is shown again after an error; deliveries show every attempt."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.registry.models import Webhook

pytestmark = pytest.mark.django_db

SLACK_URL = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTwxyz"
MASKED = "https://hooks.slack.com/services/T…/…/••••wxyz"


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def public_dns(settings) -> None:
    # hooks.slack.com does not resolve here (no network); the address check is tested in test_events.py.
    settings.WEBHOOK_ALLOW_PRIVATE = True


def _slack_webhook(project, owner) -> Webhook:
    return Webhook.objects.create(project=project, kind="slack", url=SLACK_URL, created_by=owner)


def test_an_owner_adds_a_slack_channel_and_never_sees_its_url_again(project, owner, monkeypatch) -> None:
    monkeypatch.setattr("apps.core.notifications.http.vetted_addresses", lambda host, port: ["203.0.113.7"])
    client = _client(owner)
    response = client.post("/webhooks/", {"project": project.pk, "kind": "slack", "url": SLACK_URL})
    webhook = Webhook.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/webhooks/{webhook.pk}/"
    assert (webhook.kind, webhook.url, webhook.event_types) == ("slack", SLACK_URL, [])
    for page in (client.get(response["Location"]), client.get("/webhooks/")):
        content = page.content.decode()
        assert page.status_code == 200 and MASKED in content and "aBcDeFgH" not in content


def test_the_form_shown_again_after_an_error_does_not_echo_the_url(project, owner) -> None:
    response = _client(owner).post(
        "/webhooks/", {"project": project.pk, "kind": "slack", "url": SLACK_URL, "event_types": ["nope"]}
    )
    assert response.status_code == 400
    content = response.content.decode()
    assert "nope is not one of the available choices" in content and "aBcDeFgH" not in content
    assert not Webhook.objects.exists()


def test_a_private_address_is_refused_with_the_field_named(project, owner) -> None:
    response = _client(owner).post("/webhooks/", {"project": project.pk, "kind": "webhook", "url": "http://10.0.0.8/x"})
    assert response.status_code == 400 and "10.0.0.8" in response.content.decode()
    assert not Webhook.objects.exists()


@pytest.mark.parametrize(
    ("role", "list_code", "detail_code", "delete_code"),
    [
        ("owner", 200, 200, 302),
        ("viewer", 200, 200, 403),
        ("outsider", 200, 404, 404),
    ],
)
def test_who_sees_and_deletes(role, list_code, detail_code, delete_code, project, owner, viewer, outsider) -> None:
    webhook = _slack_webhook(project, owner)
    client = _client({"owner": owner, "viewer": viewer, "outsider": outsider}[role])
    listing = client.get("/webhooks/")
    assert listing.status_code == list_code
    assert (MASKED in listing.content.decode()) is (role != "outsider")
    assert ('data-testid="webhook-form"' in listing.content.decode()) is (role == "owner")
    assert client.get(f"/webhooks/{webhook.pk}/").status_code == detail_code
    assert client.post(f"/webhooks/{webhook.pk}/delete/").status_code == delete_code
    assert Webhook.objects.exists() is (role != "owner")


def test_deliveries_show_every_attempt(settings, project, owner, register, django_capture_on_commit_callbacks) -> None:
    from tests.core.notifications.sinks import running_server

    settings.WEBHOOK_ALLOW_PRIVATE = True
    with running_server() as server:
        webhook = Webhook.objects.create(project=project, url=server.url("/fail"), created_by=owner)
        with django_capture_on_commit_callbacks(execute=True):
            register()
    content = _client(owner).get(f"/webhooks/{webhook.pk}/").content.decode()
    assert "iris-classifier version 1 registered" in content
    assert "Retrying" in content and "#1 Failed (retried) · HTTP 500" in content


def test_the_list_filters_by_project_and_names_a_bad_filter(project, owner) -> None:
    _slack_webhook(project, owner)
    client = _client(owner)
    assert MASKED in client.get(f"/webhooks/?project={project.slug}").content.decode()
    bad = client.get("/webhooks/?project=nope")
    assert bad.status_code == 400 and "No project with this slug among yours." in bad.content.decode()
    assert client.get("/webhooks/?colour=red").status_code == 400


def test_a_viewer_sees_a_plain_webhooks_url_masked_on_the_page_and_in_the_api(project, owner, viewer) -> None:
    url = "https://hooks.example.com/incoming/T0KEN-s3cret-9f2c?sig=also-secret"
    Webhook.objects.create(project=project, kind="webhook", url=url, created_by=owner)
    page = _client(viewer).get("/webhooks/").content.decode()
    listed = _client(viewer).get("/api/v1/webhooks/").json()["results"]
    assert [row["url"] for row in listed] == ["https://hooks.example.com/••••9f2c"]
    assert "https://hooks.example.com/••••9f2c" in page
    for shown in (page, str(listed)):
        assert "s3cret" not in shown and "also-secret" not in shown
