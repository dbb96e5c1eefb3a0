"""Registry events and their channels: in-app notifications, email (to a real SMTP sink), signed webhooks
(to real local HTTP servers), address checks at creation and at delivery, retries, and other apps' hooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError

from apps.registry import events, services
from apps.registry.channels import webhook as webhook_channel
from apps.registry.choices import RegistryEventType, WebhookDeliveryStatus
from apps.registry.models import Notification, RegistryEvent, Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db


# A local HTTP server that records what it receives.


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    redirect_to: str = ""

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _start_server() -> HookServer:
    hook = HookServer(server=None)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", hook.redirect_to)
            else:
                self.send_response({"/ok": 204, "/fail": 500, "/gone": 410}.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    hook.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=hook.server.serve_forever, daemon=True).start()
    return hook


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = _start_server()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def second_server() -> Iterator[HookServer]:
    server = _start_server()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def smtp_sink(settings) -> Iterator[list]:
    """A real SMTP server on a free loopback port; yields the list of received envelopes."""
    from aiosmtpd.controller import Controller

    received: list = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = False
    yield received
    controller.stop()


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
    assert events.event_dispatch(event_id=event.pk) is False
    RegistryEvent.objects.filter(pk=event.pk).update(dispatched_at=None)
    assert events.event_dispatch(event_id=event.pk) is True
    assert Notification.objects.filter(event=event).count() == 1


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
    with django_capture_on_commit_callbacks(execute=True):
        version = register()
    assert hook_server.received == []  # not subscribed to version.registered
    promotion = _request(version, member, django_capture_on_commit_callbacks)
    assert len(hook_server.received) == 1
    received = hook_server.received[0]
    _verify(webhook.secret, received)
    body = json.loads(received.body)
    assert body["type"] == "request.created" and body["data"]["request"]["id"] == promotion.pk
    assert received.headers["x-mlops-event"] == "request.created"
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.SUCCEEDED and delivery.attempts == 1
    attempt = delivery.attempt_log.get()
    assert attempt.status_code == 204 and attempt.error == "" and attempt.duration_ms > 0


def test_failed_deliveries_are_retried_with_backoff_and_every_attempt_recorded(
    settings, project, owner, register, member, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_create(project=project, url=hook_server.url("/fail"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = WebhookDelivery.objects.get()
    # Eager Celery runs the retries at once; a worker waits 30 s, 60 s, 120 s, … between them.
    assert delivery.status == WebhookDeliveryStatus.FAILED
    assert delivery.attempts == webhook_channel.MAX_ATTEMPTS == len(hook_server.received)
    assert list(delivery.attempt_log.values_list("status_code", flat=True)) == [500] * webhook_channel.MAX_ATTEMPTS
    assert [webhook_channel.backoff_seconds(n) for n in (1, 2, 3, 8)] == [30, 60, 120, 3600]


def test_a_gone_endpoint_is_not_retried(
    settings, project, owner, register, hook_server, django_capture_on_commit_callbacks
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_create(project=project, url=hook_server.url("/gone"), actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        register()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (WebhookDeliveryStatus.FAILED, 1)


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
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.FAILED and delivery.attempts == 1  # refusals are final
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
    delivery = WebhookDelivery.objects.get()
    attempt = delivery.attempt_log.get()
    assert delivery.status == WebhookDeliveryStatus.FAILED
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
    attempt = WebhookDelivery.objects.get().attempt_log.get()
    assert attempt.status_code == 204 and attempt.url == second_server.url("/ok")
