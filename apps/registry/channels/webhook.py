"""Outgoing webhooks: signed JSON POSTs that never reach the console's own network.

Signing: `X-MLOps-Timestamp: <unix seconds>` and `X-MLOps-Signature: sha256=<hex>`, the HMAC-SHA256 with the
webhook's secret of `<timestamp>.<raw body>`. A receiver recomputes it and rejects old timestamps (replays).

Address checks happen at connect time, on every hop: the host is resolved here, every resolved address must
be global (not loopback, private, link-local, shared, reserved or multicast), and the connection goes to the
vetted address with the original Host header and TLS server name, so DNS cannot change between the check and
the connection. Redirects are followed by hand (at most MAX_REDIRECTS), each hop checked again.
WEBHOOK_ALLOW_PRIVATE turns the check off (tests, closed networks); WEBHOOK_ALLOWED_HOSTS lets named
`host:port` pairs through while the check stays on for every other hop.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.registry.choices import WebhookDeliveryStatus
from apps.registry.models import RegistryEvent, Webhook, WebhookDelivery, WebhookDeliveryAttempt

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_ATTEMPTS = 6
MAX_REDIRECTS = 3
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600
ATTEMPT_SOFT_TIME_LIMIT = 60
RESPONSE_READ_LIMIT = 64 * 1024
# A delivery still pending or retrying this long after its due time lost its queue message.
STALLED_AFTER = timedelta(minutes=15)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# 4xx answers mean the receiver will not accept this payload; retrying cannot help, except for these.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-MLOps-Signature"
TIMESTAMP_HEADER = "X-MLOps-Timestamp"


class WebhookRefused(Exception):
    """The URL is not allowed (scheme, or an address in a private range); retrying cannot help."""


class WebhookError(Exception):
    """The delivery failed in a way a later attempt may not (too many redirects, a bad response)."""


# Signing


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def event_body(event: RegistryEvent) -> bytes:
    document = {
        "id": event.pk,
        "type": event.type,
        "created_at": event.created_at.isoformat(),
        "project": event.project.slug,
        "actor": event.actor.get_username() if event.actor else None,
        "data": event.payload,
        "url": settings.CONSOLE_BASE_URL
        + (event.request.get_absolute_url() if event.request_id else event.model.get_absolute_url())
        if event.request_id or event.model_id
        else settings.CONSOLE_BASE_URL,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


# Address checks


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"{url}: only http and https URLs are allowed")
    if not parts.hostname:
        raise WebhookRefused(f"{url}: the URL has no host")
    if parts.username or parts.password:
        raise WebhookRefused(f"{url}: credentials in the URL are not allowed; use the signature to authenticate")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused(f"{url}: bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def vetted_addresses(host: str, port: int) -> list[str]:
    """The host's addresses, all of them checked; raises WebhookRefused when any is not global."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(f"{host} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise WebhookRefused(f"{host} does not resolve")
    if settings.WEBHOOK_ALLOW_PRIVATE or f"{host}:{port}" in settings.WEBHOOK_ALLOWED_HOSTS:
        return addresses
    # Every address must pass: a resolver may return a public and a private one, and a client may pick either.
    blocked = [address for address in addresses if not _address_allowed(address)]
    if blocked:
        raise WebhookRefused(
            f"{host} resolves to {blocked[0]}, a loopback, private, link-local or reserved address; "
            "webhooks may only reach public addresses"
        )
    return addresses


def check_url(url: str) -> None:
    """Refuse a URL that is not http(s) or whose host resolves to a non-public address (at creation)."""
    _, host, port, _ = _split(url)
    vetted_addresses(host, port)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a vetted address; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to a vetted address; TLS verifies the certificate for the URL's host (SNI and hostname)."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str | None]:
    scheme, host, port, path = _split(url)
    addresses = vetted_addresses(host, port)
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    last_error: OSError | None = None
    for address in addresses:
        connection = connection_class(host, port, address=address, timeout=timeout)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(RESPONSE_READ_LIMIT)
            return response.status, response.getheader("Location")
        except OSError as exc:
            last_error = exc
        finally:
            connection.close()
    raise last_error or OSError(f"could not connect to {host}")


def post_signed(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> tuple[int, str]:
    """POST, following redirects by hand with each hop's addresses checked; returns (status, final URL).

    The same signed POST is sent to each hop: the signature covers the body and timestamp, not the URL.
    """
    for _ in range(MAX_REDIRECTS + 1):
        status, location = _post_once(url, body, headers, timeout)
        if status not in REDIRECT_CODES or not location:
            return status, url
        url = urljoin(url, location)
    raise WebhookError(f"more than {MAX_REDIRECTS} redirects")


# The channel


def handle_event(event: RegistryEvent) -> None:
    """One delivery per active webhook of the project that wants this event type, each sent by its own task."""
    from apps.registry.tasks import webhook_delivery_attempt_task

    hooks = [
        hook for hook in Webhook.objects.filter(project_id=event.project_id, is_active=True) if hook.wants(event.type)
    ]
    created = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(webhook=hook, event=event) for hook in hooks], ignore_conflicts=True
    )
    if not created:
        return
    ids = list(WebhookDelivery.objects.filter(event=event, attempts=0).values_list("pk", flat=True))
    transaction.on_commit(lambda: [webhook_delivery_attempt_task.delay(pk) for pk in ids])


def backoff_seconds(attempt: int) -> int:
    return min(BACKOFF_BASE_SECONDS * 2 ** max(attempt - 1, 0), BACKOFF_MAX_SECONDS)


def _claim(delivery_id: int) -> WebhookDelivery | None:
    delivery = (
        WebhookDelivery.objects.select_related(
            "webhook", "event__project", "event__actor", "event__request", "event__model"
        )
        .filter(pk=delivery_id, status__in=[WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.RETRYING])
        .first()
    )
    if delivery is None:
        return None
    # Only one worker wins the attempt number (the claim pattern: a conditional update and its row count).
    claimed = WebhookDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(
        attempts=delivery.attempts + 1
    )
    if not claimed:
        return None
    delivery.attempts += 1
    return delivery


def webhook_delivery_attempt(*, delivery_id: int) -> int | None:
    """Make one attempt and record it; returns the seconds to wait before the next, or None when done."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    webhook, event = delivery.webhook, delivery.event
    body = event_body(event)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "mlops-console-webhooks/1",
        "X-MLOps-Event": event.type,
        "X-MLOps-Delivery": str(delivery.pk),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(webhook.secret, timestamp, body),
    }
    status_code: int | None = None
    error = ""
    final_url = webhook.url
    permanent = False
    started = time.perf_counter()
    try:
        status_code, final_url = post_signed(webhook.url, body, headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
    except WebhookRefused as exc:
        error, permanent = f"refused: {exc}", True
    except (OSError, http.client.HTTPException, WebhookError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = (time.perf_counter() - started) * 1000
    WebhookDeliveryAttempt.objects.create(
        delivery=delivery,
        number=delivery.attempts,
        url=final_url[:500],
        status_code=status_code,
        error=error[:2000],
        duration_ms=duration_ms,
    )
    succeeded = status_code is not None and 200 <= status_code < 300
    if status_code is not None and not succeeded:
        error = f"HTTP {status_code}"
        permanent = 400 <= status_code < 500 and status_code not in RETRYABLE_CLIENT_ERRORS
    now = timezone.now()
    if succeeded:
        _finish(delivery, WebhookDeliveryStatus.SUCCEEDED, now)
        return None
    if permanent or delivery.attempts >= MAX_ATTEMPTS:
        _finish(delivery, WebhookDeliveryStatus.FAILED, now)
        return None
    wait = backoff_seconds(delivery.attempts)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDeliveryStatus.RETRYING, next_attempt_at=now + timedelta(seconds=wait)
    )
    return wait


def _finish(delivery: WebhookDelivery, status: str, now: Any) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=status, finished_at=now, next_attempt_at=None)


def stalled_delivery_ids() -> Iterable[int]:
    cutoff = timezone.now() - STALLED_AFTER
    stalled = WebhookDelivery.objects.filter(
        status__in=[WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.RETRYING], created_at__lt=cutoff
    ).exclude(next_attempt_at__gt=cutoff)
    return list(stalled.values_list("pk", flat=True)[:200])
