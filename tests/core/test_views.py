from __future__ import annotations

import pytest
from django.test import Client

from apps.core.models import APIToken, Membership, Project

pytestmark = pytest.mark.django_db


def login(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_pages_require_login(project: Project) -> None:
    for url in ["/", "/projects/", f"/projects/{project.slug}/", "/tokens/"]:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_member_sees_project_outsider_gets_404(project: Project, member: object, outsider: object) -> None:
    page = login(member).get(f"/projects/{project.slug}/")
    assert page.status_code == 200
    assert project.name in page.content.decode()
    assert login(outsider).get(f"/projects/{project.slug}/").status_code == 404
    assert login(outsider).get(f"/projects/{project.slug}/audit/").status_code == 404
    assert project.name not in login(outsider).get("/projects/").content.decode()


def test_create_project_in_the_ui(outsider: object) -> None:
    response = login(outsider).post("/projects/", {"name": "Churn", "description": ""})
    assert response.status_code == 302
    assert Project.objects.get(slug="churn").memberships.get().role == "owner"
    again = login(outsider).post("/projects/", {"name": "CHURN"})
    assert again.status_code == 200
    assert "differs only in case" in again.content.decode()


def test_owner_adds_member_in_the_ui_editor_cannot(project: Project, owner: object, member: object) -> None:
    assert login(member).post(f"/projects/{project.slug}/", {"username": "owner", "role": "viewer"}).status_code == 403
    response = login(owner).post(f"/projects/{project.slug}/", {"username": "member", "role": "approver"})
    assert response.status_code == 302
    assert Membership.objects.get(project=project, user=member).role == "approver"


def test_token_shown_once_in_the_ui(member: object) -> None:
    page = login(member).post("/tokens/", {"name": "laptop"}).content.decode()
    assert 'data-testid="new-token"' in page
    token = APIToken.objects.get(user=member)
    assert token.prefix in page
    assert 'data-testid="new-token"' not in login(member).get("/tokens/").content.decode()
    login(member).post(f"/tokens/{token.pk}/revoke/")
    assert APIToken.objects.get(pk=token.pk).revoked_at is not None


def test_openapi_schema_and_docs_served_locally(member: object) -> None:
    client = login(member)
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/projects/" in schema.content
    docs = client.get("/api/docs/").content.decode()
    assert "cdn" not in docs.lower() and "unpkg" not in docs.lower()
    assert "/static/drf_spectacular_sidecar/" in docs
