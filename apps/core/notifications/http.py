"""The HTTP client of the webhook and Slack channels: JSON POSTs that never reach the console's own network.

Address checks happen at connect time, on every hop: the host is resolved here, every resolved address must
be global (not loopback, private, link-local, shared, reserved or multicast), and the connection goes to the
vetted address with the original Host header and TLS server name, so DNS cannot change between the check and
the connection. Redirects are followed by hand (at most MAX_REDIRECTS), each hop checked again.
WEBHOOK_ALLOW_PRIVATE turns the check off (tests, closed networks); WEBHOOK_ALLOWED_HOSTS lets named
`host:port` pairs through while the check stays on for every other hop.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

MAX_REDIRECTS = 3
RESPONSE_READ_LIMIT = 64 * 1024
# A Retry-After longer than this is treated as this (a receiver asking for days is better retried sooner);
# one shorter than the minimum as the minimum, so a "0" never turns into a burst of immediate retries.
RETRY_AFTER_MAX_SECONDS = 3600
RETRY_AFTER_MIN_SECONDS = 1.0
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# 4xx answers mean the receiver will not accept this payload; retrying cannot help, except for these.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


class AddressRefused(Exception):
    """The URL is not allowed (scheme, or an address in a private range); retrying cannot help."""


class HTTPDeliveryError(Exception):
    """The delivery failed in a way a later attempt may not (too many redirects, a bad response)."""


@dataclass(frozen=True)
class SendResult:
    """One attempt as a transport saw it; the outbox decides what follows."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None
    url: str = ""


def _address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise AddressRefused(f"{url}: only http and https URLs are allowed")
    if not parts.hostname:
        raise AddressRefused(f"{url}: the URL has no host")
    if parts.username or parts.password:
        raise AddressRefused(f"{url}: credentials in the URL are not allowed; use the signature to authenticate")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise AddressRefused(f"{url}: bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def vetted_addresses(host: str, port: int) -> list[str]:
    """The host's addresses, all of them checked; raises AddressRefused when any is not global."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressRefused(f"{host} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    if settings.WEBHOOK_ALLOW_PRIVATE or f"{host}:{port}" in settings.WEBHOOK_ALLOWED_HOSTS:
        return addresses
    # Every address must pass: a resolver may return a public and a private one, and a client may pick either.
    blocked = [address for address in addresses if not _address_allowed(address)]
    if blocked:
        raise AddressRefused(
            f"{host} resolves to {blocked[0]}, a loopback, private, link-local or reserved address; "
            "notifications may only reach public addresses"
        )
    return addresses


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/services/T…/…/••••abcd`: enough to recognise a URL, not to use it. Slack's
    URL is its secret, and other webhook URLs often carry one too (a token in the path or the query), so every
    webhook URL is shown this way: its host and the last 4 characters of its path."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    tail = f"••••{segments[-1][-4:]}" if segments else "••••"
    if len(segments) >= 4:
        return f"{parts.scheme}://{parts.hostname}/{segments[0]}/{segments[1][:1]}…/…/{tail}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/{tail}"


def check_url(url: str, *, field: str = "url") -> None:
    """At creation: a ValidationError naming the field when the URL is not http(s) or not public."""
    try:
        _, host, port, _ = _split(url)
        vetted_addresses(host, port)
    except AddressRefused as exc:
        raise ValidationError({field: str(exc)}) from None


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


@dataclass(frozen=True)
class _Response:
    status: int
    location: str | None
    retry_after: str | None


def _post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> _Response:
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
            return _Response(response.status, response.getheader("Location"), response.getheader("Retry-After"))
        except OSError as exc:
            last_error = exc
        finally:
            connection.close()
    raise last_error or OSError(f"could not connect to {host}")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - timezone.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, RETRY_AFTER_MIN_SECONDS), RETRY_AFTER_MAX_SECONDS)


def post(url: str, body: bytes, headers: dict[str, str], *, shown: Callable[[str], str] = str) -> SendResult:
    """POST once, following redirects by hand with each hop's addresses checked, and classify the answer.

    The same body and headers go to each hop (a webhook's signature covers the body, not the URL). `shown`
    turns a URL into what may be stored in the attempt log (Slack's URL is a secret).
    """
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    try:
        for _ in range(MAX_REDIRECTS + 1):
            response = _post_once(url, body, headers, timeout)
            if response.status not in REDIRECT_CODES or not response.location:
                break
            url = urljoin(url, response.location)
        else:
            raise HTTPDeliveryError(f"more than {MAX_REDIRECTS} redirects")
    except AddressRefused as exc:
        return SendResult(ok=False, error=f"refused: {exc}", permanent=True, url=shown(url))
    except (OSError, http.client.HTTPException, HTTPDeliveryError) as exc:
        return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}", url=shown(url))
    status = response.status
    if 200 <= status < 300:
        return SendResult(ok=True, status_code=status, url=shown(url))
    return SendResult(
        ok=False,
        status_code=status,
        error=f"HTTP {status}",
        permanent=400 <= status < 500 and status not in RETRYABLE_CLIENT_ERRORS,
        retry_after=retry_after_seconds(response.retry_after) if status in (429, 503) else None,
        url=shown(url),
    )
