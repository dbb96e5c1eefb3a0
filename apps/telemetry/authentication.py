"""Who may ship prediction events: the bearer token of a deployment, resolved by the app that owns tokens.

Ingest tokens belong to deployments (derived, rotated and stored there), and telemetry, a lower layer,
must not import that app. So the owner plugs a resolver in from its `AppConfig.ready()`, the way the
deployments app registers registry event handlers and pipeline stages:

    from apps.telemetry.authentication import register_token_resolver
    register_token_resolver(ingest_source_for_token)

`resolver(token) -> IngestSource | None` answers which deployment (and project) a token belongs to.
Chosen over a copy of the tokens in telemetry (two homes for one secret, kept in sync by hand) and over a
dotted path in settings (wiring hidden from the code that reads it): one home for tokens, one visible
place that wires them, and it fails closed: with no resolver registered every token is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from apps.telemetry.services import IngestSource

TokenResolver = Callable[[str], IngestSource | None]
_resolver: TokenResolver | None = None


def register_token_resolver(resolver: TokenResolver) -> None:
    """Install the function that maps an ingest token to its deployment; a second call replaces it."""
    global _resolver  # noqa: PLW0603 - the one registry slot, set once from AppConfig.ready()
    _resolver = resolver
    _cache.clear()


# Model servers post a batch every second or so, and resolving a token costs two queries (about a fifth of the
# CPU a 500-event batch takes), so each process keeps what a valid token resolved to for this long. A deleted
# deployment's token is refused everywhere within that time; an event naming a version registered after the
# entry was cached makes the ingest API resolve the token again (`fresh=True`) before it refuses the event.
TOKEN_CACHE_SECONDS = 5.0
_cache: dict[str, tuple[float, IngestSource]] = {}


def ingest_source_for_token(token: str, *, fresh: bool = False) -> IngestSource | None:
    if not token or _resolver is None:
        return None
    now = time.monotonic()
    cached = None if fresh else _cache.get(token)
    if cached is not None and cached[0] > now:
        return cached[1]
    source = _resolver(token)
    if source is None:
        _cache.pop(token, None)
    else:
        _cache[token] = (now + TOKEN_CACHE_SECONDS, source)
    return source


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None without one."""
    header = authentication.get_authorization_header(request).decode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if header and scheme.lower() == "bearer" else None


class IngestTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer mld_…`: a deployment's ingest token, as its model servers send it."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, IngestSource] | None:
        token = bearer_token(request)
        if token is None:
            return None
        source = ingest_source_for_token(token)
        if source is None:
            raise exceptions.AuthenticationFailed("Authorization: unknown deployment token.")
        return AnonymousUser(), source

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class IngestTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.telemetry.authentication.IngestTokenAuthentication"
    name = "ingestToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A deployment's ingest token: `Bearer mld_…`."}


class HasIngestToken(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.auth, IngestSource)
