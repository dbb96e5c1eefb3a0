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


def ingest_source_for_token(token: str) -> IngestSource | None:
    return _resolver(token) if token and _resolver is not None else None


class IngestTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer mld_…`: a deployment's ingest token, as its model servers send it."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, IngestSource] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        source = ingest_source_for_token(token.strip())
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
