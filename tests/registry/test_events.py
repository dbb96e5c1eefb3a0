"""Registry events and their notifications: in-app notifications, email (to a real SMTP sink), signed webhooks
and Slack (to real local HTTP servers) through the core outbox, address checks at creation and at delivery,
retries, other apps' hooks, and a dispatcher killed after its claim."""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.notifications import services as outbox
from apps.core.notifications.choices import DeliveryStatus
from apps.core.notifications.models import Delivery
from apps.core.notifications.tasks import notifications_deliver_due_task
from apps.registry import events, services
from apps.registry.choices import RegistryEventType
from apps.registry.models import Notification, RegistryEvent, Webhook
from tests.core.notifications.sinks import HookServer, Received, running_server, running_smtp

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def second_server() -> Iterator[HookServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def smtp_sink(settings) -> Iterator[list]:
    with running_smtp(settings) as received:
        yield received


def _request(version, actor, callbacks):
    with callbacks(execute=True):
        return services.promotion_request_create(version=version, actor=actor, target_stage="production", comment="go")


# In-app and email


def test_new_request_notifies_approvers_and_a_decision_the_requester(
    register, member, approver, owner, viewer, django_capture_on_commit_callbacks
) -> None:
    version = register()
    promotion = _request(version, member, django_capture_on_commit_callbacks)
    notified = set(
        Notification.objects.filter(event__type=RegistryEventType.REQUEST_CREATED).values_list(
            "user__username", flat=True
        )
    )
    assert notified == {"approver", "owner"}
    with django_capture_on_commit_callbacks(execute=True):
        services.promotion_request_approve(request=promotion, actor=approver)
    decision = Notification.objects.filter(event__type=RegistryEventType.REQUEST_APPROVED)
    assert list(decision.values_list("user__username", flat=True)) == ["member"]
    # Stage changes go to the project's editors and above, except whoever made them.
    stage = Notification.objects.filter(event__type=RegistryEventType.STAGE_CHANGED)
    assert set(stage.values_list("user__username", flat=True)) == {"member", "owner"}
    assert not Notification.objects.filter(user=viewer).exists()
    undispatched = RegistryEvent.objects.filter(dispatched_at__isnull=True)
    assert list(undispatched.values_list("type", flat=True)) == [RegistryEventType.VERSION_REGISTERED]  # no capture


def test_dispatch_is_safe_twice(register, member, approver, django_capture_on_commit_callbacks) -> None:
    _request(register(), member, django_capture_on_commit_callbacks)
    event = RegistryEvent.objects.get(type=RegistryEventType.REQUEST_CREATED)
    assert event.dispatched_at is not None and event.claimed_until is None
    assert events.event_dispatch(event_id=event.pk) is False
    RegistryEvent.objects.filter(pk=event.pk).update(dispatched_at=None)
    assert events.event_dispatch(event_id=event.pk) is True
    assert Notification.objects.filter(event=event).count() == 1
    # Emails were stored with the event, not by the dispatcher: a second dispatch adds none.
    assert list(Delivery.objects.filter(source=f"registry.event:{event.pk}").values_list("recipient", flat=True)) == [
        "approver@example.com"
    ]


def test_emails_go_through_a_real_smtp_server(
    register, member, approver, owner, smtp_sink, django_capture_on_commit_callbacks
) -> None:
    version = register()
    promotion = _request(version, member, django_capture_on_commit_callbacks)
    assert sorted(rcpt for envelope in smtp_sink for rcpt in envelope.rcpt_tos) == [
        "approver@example.com",
        "owner@example.com",
    ]
    message = smtp_sink[0].content.decode()
    assert "asks to move iris-classifier v1 to production" in message
    assert f"/approvals/{promotion.pk}/" in message
    smtp_sink.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.promotion_request_reject(request=promotion, actor=approver, comment="accuracy too low")
    assert [envelope.rcpt_tos for envelope in smtp_sink] == [["member@example.com"]]
    assert "accuracy too low" in smtp_sink[0].content.decode()


def test_other_apps_hook_into_events(register, member, approver, django_capture_on_commit_callbacks) -> None:
    """The documented hook for the deployments app: a handler registered like the channels."""
    seen: list[tuple[str, dict]] = []
    events.register_event_handler("test-deployments", lambda event: seen.append((event.type, event.payload)))
    try:
        promotion = _request(register(), member, django_capture_on_commit_callbacks)
        with django_capture_on_commit_callbacks(execute=True):
            services.promotion_request_approve(request=promotion, actor=approver)
    finally:
        events._HANDLERS.pop("test-deployments")
    stage_changes = [payload for kind, payload in seen if kind == RegistryEventType.STAGE_CHANGED]
    assert stage_changes[0]["to_stage"] == "production" and stage_changes[0]["version"]["number"] == 1


def test_a_failing_handler_does_not_stop_the_others(
    register, member, approver, django_capture_on_commit_callbacks
) -> None:
    def broken(event: RegistryEvent) -> None:
        raise RuntimeError("boom")

    saved = events.event_handlers()
    events._HANDLERS.clear()
    events._HANDLERS.update({"a-broken": broken, **saved})  # it runs first
    try:
        _request(register(), member, django_capture_on_commit_callbacks)
    finally:
        events._HANDLERS.clear()
        events._HANDLERS.update(saved)
    assert Notification.objects.filter(event__type=RegistryEventType.REQUEST_CREATED).exists()


# Webhooks


def _verify(secret: str, received: Received) -> None:
    timestamp = received.headers["x-mlops-timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-mlops-signature"] == f"sha256={expected}"


def test_webhook_posts_are_signed(
    settings, project, owner, register, member, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    webhook = services.webhook_create(
        project=project, url=hook_server.url("/ok"), actor=owner, event_types=[RegistryEventType.REQUEST_CREATED]
    )
    assert Webhook.objects.get().kind == "webhook"
    with django_capture_on_commit_callbacks(execute=True):
        version = register()
    assert hook_server.received == []  # not subscribed to version.registered
    promotion = _request(version, member, django_capture_on_commit_callbacks)
    assert len(hook_server.received) == 1
    received = hook_server.received[0]
    _verify(webhook.secret, received)
    body = json.loads(received.body)
    assert body["type"] == "request.created" and body["data"]["request"]["id"] == promotion.pk
    event = RegistryEvent.objects.get(type=RegistryEventType.REQUEST_CREATED)
    assert body["id"] == event.pk and body["project"] == project.slug and body["actor"] == "member"
    assert body["url"] == f"http://localhost:8000/approvals/{promotion.pk}/"
    assert received.headers["x-mlops-event"] == "request.created"
    delivery = Delivery.objects.get(source=webhook.source)
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 1
    attempt = delivery.attempt_log.get()
    assert attempt.status_code == 204 and attempt.error == "" and attempt.duration_ms > 0


def test_failed_deliveries_are_retried_with_backoff_and_every_attempt_recorded(
    settings, project, owner, register, member, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_create(project=project, url=hook_server.url("/fail"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.RETRYING, 1)
    # Each retry waits its turn (30 s, 60 s, 120 s, …); here the clock is moved on and the beat sweep runs.
    for _ in range(outbox.MAX_ATTEMPTS - 1):
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - outbox.SWEEP_GRACE)
        assert notifications_deliver_due_task() == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == outbox.MAX_ATTEMPTS == len(hook_server.received)
    assert list(delivery.attempt_log.values_list("status_code", flat=True)) == [500] * outbox.MAX_ATTEMPTS


def test_a_gone_endpoint_is_not_retried(
    settings, project, owner, register, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_create(project=project, url=hook_server.url("/gone"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
def test_private_and_odd_urls_are_refused_at_creation(url, project, owner) -> None:
    with pytest.raises(ValidationError) as error:
        services.webhook_create(project=project, url=url, actor=owner)
    assert "url" in error.value.message_dict
    assert not Webhook.objects.exists()


def test_a_host_that_resolves_to_loopback_is_refused_at_delivery(
    project, owner, register, hook_server, django_capture_on_commit_callbacks
) -> None:
    # Created behind the check's back, as when a name's DNS record changes after creation.
    Webhook.objects.create(project=project, url=f"http://localhost:{hook_server.port}/ok", created_by=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1  # refusals are final
    assert "refused" in delivery.attempt_log.get().error and "127.0.0.1" in delivery.attempt_log.get().error
    assert hook_server.received == []


def test_a_redirect_to_a_private_address_is_refused(
    settings, project, owner, register, hook_server, second_server, django_capture_on_commit_callbacks
) -> None:
    # Only the first server is let through (a narrow allowlist); the check stays on for every other hop.
    settings.WEBHOOK_ALLOWED_HOSTS = [f"127.0.0.1:{hook_server.port}"]
    hook_server.redirect_to = second_server.url("/ok")
    services.webhook_create(project=project, url=hook_server.url("/redirect"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = Delivery.objects.get()
    attempt = delivery.attempt_log.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert "refused" in attempt.error
    assert [r.path for r in hook_server.received] == ["/redirect"]
    assert second_server.received == []


def test_redirects_are_followed_when_every_hop_is_allowed(
    settings, project, owner, register, hook_server, second_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    hook_server.redirect_to = second_server.url("/ok")
    webhook = services.webhook_create(project=project, url=hook_server.url("/redirect"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    assert len(second_server.received) == 1
    _verify(webhook.secret, second_server.received[0])
    attempt = Delivery.objects.get().attempt_log.get()
    assert attempt.status_code == 204 and attempt.url == f"http://127.0.0.1:{second_server.port}/••••ok"


# Slack


SLACK_PATH = "/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTwxyz"


def test_slack_receives_block_kit_and_its_url_is_never_shown(
    settings, project, owner, register, hook_server, admin_client, django_capture_on_commit_callbacks
) -> None:
    from tests.conftest import client_for

    settings.WEBHOOK_ALLOW_PRIVATE = True
    url = hook_server.url(SLACK_PATH)
    masked = "http://127.0.0.1/services/T…/…/••••wxyz"
    api = client_for(owner)
    created = api.post("/api/v1/webhooks/", {"project": project.slug, "kind": "slack", "url": url}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["url"] == masked and created.json()["secret"] is None
    webhook = Webhook.objects.get()
    assert (webhook.kind, webhook.url) == ("slack", url)
    with django_capture_on_commit_callbacks(execute=True):
        version = register()
    [received] = hook_server.received
    body = json.loads(received.body)
    link = f"http://localhost:8000/models/{version.model_id}/"
    assert body["text"] == f"[{project.name}] iris-classifier version 1 registered (upload). {link}"
    assert body["blocks"][0]["type"] == "header" and body["blocks"][-1]["elements"][0]["url"] == link
    # Neither the API, the deliveries, the audit log nor the admin give the URL back.
    for response in (
        api.get("/api/v1/webhooks/"),
        api.get(f"/api/v1/webhooks/{webhook.pk}/"),
        api.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/"),
        admin_client.get(f"/admin/registry/webhook/{webhook.pk}/change/"),
        admin_client.get("/admin/registry/webhook/"),
        admin_client.get("/admin/core/delivery/"),
        admin_client.get(f"/admin/core/delivery/{Delivery.objects.get().pk}/change/"),
        admin_client.get("/admin/core/auditentry/"),
    ):
        assert response.status_code == 200
        content = response.content.decode()
        assert SLACK_PATH not in content and "aBcDeFgH" not in content
        assert masked in content
    [delivery] = api.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/").json()["results"]
    assert delivery["status"] == "succeeded" and delivery["recipient"] == masked
    assert delivery["attempt_log"][0]["status_code"] == 200 and delivery["attempt_log"][0]["url"] == masked


def test_a_bad_kind_or_url_is_a_400_naming_the_field(project, owner) -> None:
    from tests.conftest import client_for

    api = client_for(owner)
    bad_kind = api.post(
        "/api/v1/webhooks/",
        {"project": project.slug, "kind": "pager", "url": "https://hooks.slack.com/services/T/B/x"},
        format="json",
    )
    assert bad_kind.status_code == 400 and "kind" in bad_kind.json()
    private = api.post(
        "/api/v1/webhooks/", {"project": project.slug, "kind": "slack", "url": "http://10.0.0.8/x"}, format="json"
    )
    assert private.status_code == 400 and "url" in private.json()
    assert not Webhook.objects.exists()


# A dispatcher killed after its claim (the at-most-once bug)

DISPATCHER = textwrap.dedent(
    """
    import os, signal, sys
    import django

    django.setup()
    from apps.registry import events

    def killed_before_the_handlers(event):
        os.kill(os.getpid(), signal.SIGKILL)

    # It runs first: the process dies after the claim and before any handler has run.
    handlers = dict(events._HANDLERS)
    events._HANDLERS.clear()
    events._HANDLERS.update({"killed": killed_before_the_handlers, **handlers})
    events.event_dispatch(event_id=int(sys.argv[1]))
    """
)


@pytest.mark.django_db(transaction=True)
def test_a_dispatcher_killed_after_its_claim_loses_nothing(
    settings, project, owner, member, approver, register, hook_server, smtp_sink
) -> None:
    """Today's bug: the event was marked dispatched before the handlers ran, so a SIGKILL in between lost its
    webhook, its emails and its in-app notifications for good. Now the deliveries are stored with the event,
    the dispatcher holds a lease, and the beat tasks finish the work: one webhook POST, one mail per approver."""
    from django.db import connection

    from apps.registry.tasks import registry_events_dispatch_pending_task
    from tests.core.notifications.test_outbox import lost_queue_messages, run_killed_worker

    if connection.vendor != "postgresql":
        pytest.skip("the killed dispatcher is a second process; it needs a database server (DATABASE_URL)")
    settings.WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_create(project=project, url=hook_server.url("/ok"), actor=owner)
    version = register()
    with lost_queue_messages(), mock.patch("apps.registry.tasks.registry_event_dispatch_task.apply_async"):
        services.promotion_request_create(version=version, actor=member, target_stage="production", comment="go")
    event = RegistryEvent.objects.get(type=RegistryEventType.REQUEST_CREATED)
    run_killed_worker(DISPATCHER, str(event.pk), lease_seconds=300)
    event.refresh_from_db()
    assert event.dispatched_at is None and event.claimed_until is not None
    assert not Notification.objects.filter(event=event).exists()
    # An hour passes: the event is a straggler, the dead dispatcher's lease is over, the deliveries' queue
    # messages are long late; beat runs its two sweeps.
    RegistryEvent.objects.update(created_at=timezone.now() - timedelta(hours=1))
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))
    RegistryEvent.objects.filter(pk=event.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    registry_events_dispatch_pending_task()
    notifications_deliver_due_task()
    notifications_deliver_due_task()
    event.refresh_from_db()
    assert event.dispatched_at is not None
    assert set(Notification.objects.filter(event=event).values_list("user__username", flat=True)) == {
        "approver",
        "owner",
    }
    posted = [json.loads(r.body)["type"] for r in hook_server.received]
    assert posted.count("request.created") == 1
    assert sorted(rcpt for envelope in smtp_sink for rcpt in envelope.rcpt_tos) == [
        "approver@example.com",
        "owner@example.com",
    ]


def test_deleting_a_subscription_cancels_its_deliveries_and_forgets_its_url(
    settings, project, owner, register, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    webhook = services.webhook_create(project=project, kind="slack", url=hook_server.url("/fail"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.RETRYING and delivery.target == {"url": hook_server.url("/fail")}
    services.webhook_delete(webhook=webhook, actor=owner)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.target == {}
    assert delivery.last_error == "cancelled: the webhook was deleted"
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert notifications_deliver_due_task() == 0 and len(hook_server.received) == 1
