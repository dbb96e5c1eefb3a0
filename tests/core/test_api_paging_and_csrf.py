"""API lists are paged with a capped page size; a session-authenticated API write needs the CSRF token."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.core.models import APIToken, AuditEntry
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

MAX_PAGE_SIZE = 500


def test_a_page_size_above_the_maximum_returns_the_maximum(project: object, viewer: object) -> None:
    AuditEntry.objects.bulk_create(
        AuditEntry(project=project, action="test.filler", object_type="thing", object_id=str(i), object_repr="thing")
        for i in range(MAX_PAGE_SIZE + 1)
    )
    client = client_for(viewer)
    capped = client.get("/api/v1/audit/", {"page_size": 100_000}).json()
    assert capped["count"] > MAX_PAGE_SIZE and len(capped["results"]) == MAX_PAGE_SIZE
    assert capped["next"], "the rest is on the next page"
    assert len(client.get("/api/v1/audit/", {"page_size": 7}).json()["results"]) == 7
    assert len(client.get("/api/v1/audit/").json()["results"]) == 50, "the default page size"


def test_a_session_authenticated_api_post_needs_the_csrf_token(member: object) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(member)
    refused = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert not APIToken.objects.exists()

    client.get("/tokens/")  # a page of the console sets the CSRF cookie, as in a browser
    token = client.cookies["csrftoken"].value
    accepted = client.post("/api/v1/tokens/", {"name": "ci"}, format="json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 201, accepted.json()
    assert APIToken.objects.get(user=member).name == "ci"
