from __future__ import annotations

import pytest

from apps.core.models import AuditEntry, Membership, Project
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def test_list_shows_only_my_projects(project: Project, member: object, outsider: object) -> None:
    other = Project.objects.create(name="Other", name_key="other", slug="other")
    mine = client_for(member).get("/api/v1/projects/").json()
    assert [p["slug"] for p in mine["results"]] == [project.slug]
    assert mine["results"][0]["role"] == "editor"
    assert client_for(outsider).get("/api/v1/projects/").json()["count"] == 0
    assert client_for(outsider).get(f"/api/v1/projects/{project.slug}/").status_code == 404
    assert client_for(member).get(f"/api/v1/projects/{other.slug}/").status_code == 404


def test_create_project_makes_me_owner_and_audits(outsider: object) -> None:
    response = client_for(outsider).post(
        "/api/v1/projects/", {"name": "Fraud models", "description": "x"}, format="json", REMOTE_ADDR="10.1.2.3"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["slug"] == "fraud-models"
    project = Project.objects.get(slug="fraud-models")
    assert Membership.objects.get(project=project, user=outsider).role == "owner"
    entry = AuditEntry.objects.get(action="project.created", project=project)
    assert entry.actor == outsider
    assert entry.ip_address == "10.1.2.3"


@pytest.mark.parametrize("name", ["project 0", "PROJECT 0", "Project%200", "Ｐｒｏｊｅｃｔ 0", "  Project 0 "])
def test_names_differing_only_in_case_form_or_encoding_are_refused(outsider: object, name: str) -> None:
    client_for(outsider).post("/api/v1/projects/", {"name": "Project 0"}, format="json")
    response = client_for(outsider).post("/api/v1/projects/", {"name": name}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()
    assert Project.objects.count() == 1


def test_project_name_errors(outsider: object) -> None:
    assert "name" in client_for(outsider).post("/api/v1/projects/", {"name": "!!!"}, format="json").json()
    assert "name" in client_for(outsider).post("/api/v1/projects/", {}, format="json").json()


def test_a_project_name_too_long_once_case_folded_is_a_400_naming_the_field(outsider: object) -> None:
    response = client_for(outsider).post("/api/v1/projects/", {"name": "ß" * 100}, format="json")
    assert response.status_code == 400
    assert "limit is 100" in response.json()["name"][0]
    assert not Project.objects.exists()


def test_only_owners_learn_which_user_names_exist(project: Project, owner: object, member: object) -> None:
    url = f"/api/v1/projects/{project.slug}/members/"
    for name in ("ghost", "owner"):
        refused = client_for(member).post(url, {"username": name, "role": "viewer"}, format="json")
        assert refused.status_code == 403 and "owner role" in refused.json()["detail"], name
    unknown = client_for(owner).post(url, {"username": "ghost", "role": "viewer"}, format="json")
    assert (unknown.status_code, unknown.json()) == (400, {"username": ["No active user named 'ghost'."]})
    assert project.memberships.count() == 2


def test_only_owners_manage_members(project: Project, owner: object, member: object, viewer: object) -> None:
    url = f"/api/v1/projects/{project.slug}/members/"
    assert client_for(member).post(url, {"username": "viewer", "role": "editor"}, format="json").status_code == 403
    response = client_for(owner).post(url, {"username": "viewer", "role": "approver"}, format="json")
    assert response.status_code == 200
    assert {m["username"]: m["role"] for m in response.json()} == {
        "owner": "owner",
        "member": "editor",
        "viewer": "approver",
    }
    audit = AuditEntry.objects.get(action="membership.set", project=project)
    assert audit.before == {"role": "viewer"} and audit.after == {"user": "viewer", "role": "approver"}


def test_member_errors(project: Project, owner: object, outsider: object) -> None:
    url = f"/api/v1/projects/{project.slug}/members/"
    bad_user = client_for(owner).post(url, {"username": "ghost", "role": "editor"}, format="json")
    assert bad_user.status_code == 400 and "username" in bad_user.json()
    bad_role = client_for(owner).post(url, {"username": "owner", "role": "king"}, format="json")
    assert bad_role.status_code == 400 and "role" in bad_role.json()
    last_owner = client_for(owner).post(url, {"username": "owner", "role": "viewer"}, format="json")
    assert last_owner.status_code == 400 and "owner" in last_owner.json()["role"][0]
    assert client_for(outsider).post(url, {"username": "outsider", "role": "owner"}, format="json").status_code == 404
    removal = client_for(owner).delete(f"{url}owner/")
    assert removal.status_code == 400
    assert Membership.objects.get(project=project, user=owner).role == "owner"


def test_owner_updates_settings_others_cannot(project: Project, owner: object, approver: object) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    assert client_for(approver).patch(url, {"required_approvals": 2}, format="json").status_code == 403
    assert client_for(owner).patch(url, {"required_approvals": 2}, format="json").status_code == 200
    project.refresh_from_db()
    assert project.required_approvals == 2


def test_a_settings_change_audits_only_what_changed(project: Project, owner: object) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    payload = {"description": project.description, "required_approvals": 3}
    assert client_for(owner).patch(url, payload, format="json").status_code == 200
    entry = AuditEntry.objects.get(action="project.updated")
    assert entry.before == {"required_approvals": 1} and entry.after == {"required_approvals": 3}
    assert client_for(owner).patch(url, payload, format="json").status_code == 200
    assert AuditEntry.objects.filter(action="project.updated").count() == 1


def test_audit_api_is_scoped(project: Project, owner: object, outsider: object) -> None:
    client_for(owner).patch(f"/api/v1/projects/{project.slug}/", {"description": "new"}, format="json")
    assert client_for(owner).get(f"/api/v1/audit/?project={project.slug}").json()["count"] == 1
    assert client_for(outsider).get("/api/v1/audit/").json()["count"] == 0
