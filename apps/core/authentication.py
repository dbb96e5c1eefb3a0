from __future__ import annotations

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.core.models import TOKEN_PREFIX, APIToken


def client_ip(request: HttpRequest) -> str:
    """The client's address for the sign-in lockout. Behind our proxy it is the right-most X-Forwarded-For entry,
    the one the proxy appended (entries to its left are whatever the client sent)."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "") if settings.SECURE_BEHIND_PROXY else ""
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.META.get("REMOTE_ADDR", "")


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """What a locked-out sign-in gets (AXES_LOCKOUT_CALLABLE): 429 with Retry-After, JSON on the API."""
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": "Authorization: too many failed sign-ins; try again later."}, status=429)
    else:
        context = {"failure_limit": settings.AXES_FAILURE_LIMIT, "cooloff_seconds": settings.LOGIN_COOLOFF_SECONDS}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(settings.LOGIN_COOLOFF_SECONDS)
    return response


class APITokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer mlc_…` with a personal API token.

    Bad tokens count in the sign-in lockout like bad passwords (under the client's address, and under the
    presented token's first characters as its "username"); a locked-out address gets 429, even with a good token.
    """

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[object, APIToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() not in {"bearer", "token"}:
            return None
        key = key.strip()
        credentials = {"username": f"api-token:{key[:12]}"}
        if not AxesProxyHandler.is_allowed(request._request, credentials):
            raise exceptions.Throttled(
                wait=settings.LOGIN_COOLOFF_SECONDS,
                detail="Authorization: too many failed sign-ins; try again later.",
            )
        if not key.startswith(TOKEN_PREFIX):
            self._failed(request, credentials)
            raise exceptions.AuthenticationFailed("Authorization: the token is malformed.")
        token = (
            APIToken.objects.active()
            .select_related("user")
            .filter(key_hash=APIToken.hash_key(key), user__is_active=True)
            .first()
        )
        if token is None:
            self._failed(request, credentials)
            raise exceptions.AuthenticationFailed("Authorization: the token is unknown or revoked.")
        APIToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword

    def _failed(self, request: Request, credentials: dict[str, str]) -> None:
        user_login_failed.send(sender=type(self), credentials=credentials, request=request._request)


class APITokenScheme(OpenApiAuthenticationExtension):
    """Describes token authentication in the OpenAPI schema."""

    target_class = "apps.core.authentication.APITokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A personal API token: `Bearer mlc_…`."}
