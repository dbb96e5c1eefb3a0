"""Domain errors (apps/core/exceptions.py) are answered in one way by the API and in one way by the pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.core.models import Project
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.mark.urls("tests.core.error_urls")
@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("not-found", 404, {"detail": "No such deployment."}),
        ("permission", 403, {"detail": "This needs the editor role in project 'p'; you are viewer."}),
        ("gate", 403, {"model_version": ["v1 is in no stage: a production deployment needs …"]}),
        ("conflict", 409, {"detail": "Deployment iris changed: reload it and try again."}),
        ("validation", 400, {"replicas": ["Must be between 1 and 8, not 9."]}),
        ("too-large", 413, {"detail": "file: the upload is larger than the limit of 1,000 bytes"}),
        ("django-validation", 400, {"name": ["A dataset needs a name."]}),
    ],
)
def test_the_api_answers_each_error_with_its_status_and_message(kind: str, status: int, body: dict) -> None:
    response = APIClient().post(f"/raise/api/{kind}/")
    assert (response.status_code, response.json()) == (status, body)


@pytest.mark.urls("tests.core.error_urls")
@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("conflict", 409, "Deployment iris changed: reload it and try again."),
        ("validation", 400, "Must be between 1 and 8, not 9."),
        ("django-validation", 400, "A dataset needs a name."),
    ],
)
def test_a_refused_form_goes_back_to_its_page_with_the_message(kind: str, status: int, message: str) -> None:
    client = Client()
    back = client.post(f"/raise/page/{kind}/", HTTP_REFERER="http://testserver/deployments/7/?page=2")
    assert back.status_code == 302 and back["Location"] == "http://testserver/deployments/7/?page=2"
    shown = client.get("/accounts/login/")
    assert message in shown.content.decode(), "the message waits for the next page"

    # No page of ours to go back to (a foreign or missing Referer): an error page with the status says why.
    for headers in ({"HTTP_REFERER": "https://evil.example.com/"}, {}):
        page = client.post(f"/raise/page/{kind}/", **headers)
        assert page.status_code == status and "Location" not in page
        assert 'data-testid="domain-error"' in page.content.decode() and message in page.content.decode()
    assert Client().get(f"/raise/page/{kind}/").status_code == status, "a page that fails to show says why"


@pytest.mark.urls("tests.core.error_urls")
@pytest.mark.parametrize(
    ("kind", "status", "shown"),
    [
        ("not-found", 404, "it belongs to a project you are not a member of"),
        ("permission", 403, "This needs the editor role in project &#x27;p&#x27;; you are viewer."),
        ("gate", 403, "a production deployment needs"),
    ],
)
def test_not_found_and_permission_denied_are_the_404_and_403_pages(kind: str, status: int, shown: str) -> None:
    client = Client()
    for response in (
        client.post(f"/raise/page/{kind}/", HTTP_REFERER="http://testserver/"),
        client.get(f"/raise/page/{kind}/"),
    ):
        assert response.status_code == status and shown in response.content.decode()


def test_a_viewer_is_told_which_role_the_change_needs(project: Project, owner: Any, viewer: Any) -> None:
    """Through the real stack: the service's refusal reaches the API and the page with its message."""
    api = client_for(viewer).post(f"/api/v1/projects/{project.slug}/members/", {"username": "owner", "role": "viewer"})
    expected = f"This needs the owner role in project {project.slug!r}; you are viewer."
    assert (api.status_code, api.json()) == (403, {"detail": expected})
    browser = Client()
    browser.force_login(viewer)
    page = browser.post(f"/projects/{project.slug}/", {"username": "owner", "role": "viewer"})
    assert page.status_code == 403
    assert project.memberships.get(user=owner).role == "owner"
