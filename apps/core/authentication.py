from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.core.models import TOKEN_PREFIX, APIToken


class APITokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer mlc_…` with a personal API token."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[object, APIToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() not in {"bearer", "token"}:
            return None
        key = key.strip()
        if not key.startswith(TOKEN_PREFIX):
            raise exceptions.AuthenticationFailed("Authorization: the token is malformed.")
        token = (
            APIToken.objects.active()
            .select_related("user")
            .filter(key_hash=APIToken.hash_key(key), user__is_active=True)
            .first()
        )
        if token is None:
            raise exceptions.AuthenticationFailed("Authorization: the token is unknown or revoked.")
        APIToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class APITokenScheme(OpenApiAuthenticationExtension):
    """Describes token authentication in the OpenAPI schema."""

    target_class = "apps.core.authentication.APITokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A personal API token: `Bearer mlc_…`."}
