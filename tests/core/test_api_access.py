from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.core.models import APIToken, AuditEntry
from tests.conftest import client_for

PUBLIC_API_ROUTES: set[str] = set()


def _walk(patterns: list, prefix: str = "") -> list[str]:
    routes = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes.extend(_walk(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern):
            routes.append(route)
    return routes


def _concrete(route: str) -> str:
    """Turn a route pattern into a URL by filling every parameter with a plausible value."""
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<format>[^)]*\)", "", route)
    route = re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", route)
    route = re.sub(r"<(?:\w+:)?\w+>", "1", route)
    route = route.replace("\\.", ".").replace("/?", "/")
    return "/" + route


def api_urls() -> list[str]:
    routes = [r for r in _walk(get_resolver().url_patterns) if r.lstrip("^").startswith("api/v1/")]
    return sorted({_concrete(r) for r in routes if "format" not in r} - PUBLIC_API_ROUTES)


def test_the_api_has_routes() -> None:
    assert len(api_urls()) >= 6


@pytest.mark.django_db
@pytest.mark.parametrize("url", api_urls())
def test_every_api_route_requires_credentials(url: str) -> None:
    client = APIClient()
    for method in ("get", "post", "delete"):
        response = getattr(client, method)(url)
        assert response.status_code == 401, f"{method.upper()} {url} answered {response.status_code}"
        assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
def test_health_endpoints_are_public() -> None:
    client = APIClient()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] == "ok"


@pytest.mark.django_db
def test_token_lifecycle(member: object) -> None:
    response = client_for(member).post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert response.status_code == 201
    key = response.json()["key"]
    assert key.startswith("mlc_")
    token = APIToken.objects.get(user=member)
    assert token.key_hash != key and key not in token.key_hash, "only the hash is stored"

    listing = client_for(member).get("/api/v1/tokens/").json()["results"]
    assert listing[0]["key"] is None, "the key is shown once, at creation"

    bearer = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert bearer.get("/api/v1/projects/").status_code == 200
    assert APIToken.objects.get(pk=token.pk).last_used_at is not None

    assert client_for(member).delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
    denied = bearer.get("/api/v1/projects/")
    assert denied.status_code == 401
    assert "revoked" in denied.json()["detail"]
    assert AuditEntry.objects.filter(action="api_token.revoked", object_id=str(token.pk)).exists()


@pytest.mark.django_db
def test_token_errors(member: object, outsider: object) -> None:
    assert client_for(member).post("/api/v1/tokens/", {}, format="json").json() == {"name": ["This field is required."]}
    assert APIClient(HTTP_AUTHORIZATION="Bearer nope").get("/api/v1/projects/").status_code == 401
    token, _ = APIToken.objects.create(user=member, name="x", prefix="mlc_x", key_hash="0" * 64), None
    assert client_for(outsider).delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
