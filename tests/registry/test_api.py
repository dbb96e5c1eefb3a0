"""Every registry endpoint as viewer, editor (`member`), approver, owner and outsider.

Outsiders get 404 for objects of a project they are not in; where they name such a project or object in a
request body (creating something), the field is reported as not found (400), exactly as for a missing one.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.test import override_settings

from apps.core.models import AuditEntry
from apps.registry import services
from apps.registry.choices import PromotionRequestStatus
from apps.registry.models import ModelVersion, PromotionRequest, RegisteredModel, Webhook
from tests.conftest import client_for
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

ROLES = ["viewer", "member", "approver", "owner", "outsider"]


@pytest.fixture
def users(viewer, member, approver, owner, outsider) -> dict[str, object]:
    return {"viewer": viewer, "member": member, "approver": approver, "owner": owner, "outsider": outsider}


@pytest.fixture
def requester(project) -> object:
    """An editor who is none of the role fixtures, so that each of them can be tested as a decider."""
    user = UserFactory(username="requester")
    MembershipFactory(project=project, user=user, role="editor")
    return user


@pytest.fixture
def version(register):
    return register()


def expect(response, code: int) -> None:
    assert response.status_code == code, (response.status_code, response.content[:300])


def audited(obj, action: str) -> list[object]:
    """The actors of the audit entries with `action` on `obj`."""
    entries = AuditEntry.objects.filter(object_id=str(obj.pk), action=action)
    return [entry.actor for entry in entries]


@pytest.mark.parametrize("role", ROLES)
def test_read_endpoints(role, users, version) -> None:
    client = client_for(users[role])
    visible = role != "outsider"
    listed = client.get("/api/v1/registered-models/").json()
    assert listed["count"] == (1 if visible else 0)
    versions = client.get("/api/v1/model-versions/", {"model": version.model_id}).json()
    assert versions["count"] == (1 if visible else 0)
    code = 200 if visible else 404
    expect(client.get(f"/api/v1/registered-models/{version.model_id}/"), code)
    expect(client.get(f"/api/v1/model-versions/{version.pk}/"), code)
    expect(client.get(f"/api/v1/model-versions/{version.pk}/aliases/"), code)
    download = client.get(f"/api/v1/model-versions/{version.pk}/download/")
    expect(download, code)
    if visible:
        archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
        assert sorted(archive.namelist()) == ["metadata.json", "model.zip", "signature.json"]
        assert json.loads(archive.read("metadata.json"))["version"] == 1


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 201), ("approver", 201), ("owner", 201), ("outsider", 400)]
)
def test_create_registered_model(role, code, users, project) -> None:
    response = client_for(users[role]).post("/api/v1/registered-models/", {"project": project.slug, "name": "New"})
    expect(response, code)
    if code == 400:
        assert "project" in response.json()


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 200), ("approver", 200), ("owner", 200), ("outsider", 404)]
)
def test_update_registered_model(role, code, users, version) -> None:
    description = version.model.description
    response = client_for(users[role]).patch(
        f"/api/v1/registered-models/{version.model_id}/", {"description": "# Iris\nA *forest*."}
    )
    expect(response, code)
    version.model.refresh_from_db()
    updated = code == 200
    assert version.model.description == ("# Iris\nA *forest*." if updated else description)
    assert audited(version.model, "registered_model.updated") == ([users[role]] if updated else [])


def test_duplicate_model_name_is_a_400_naming_the_field(member, project, version) -> None:
    response = client_for(member).post(
        "/api/v1/registered-models/", {"project": project.slug, "name": "IRIS-Classifier"}
    )
    expect(response, 400)
    assert "name" in response.json()


def test_a_name_that_case_folding_makes_too_long_is_a_400_naming_the_field(member, project) -> None:
    # 'ß' case-folds to 'ss': 100 characters as typed, 200 as compared; the compared form must fit too.
    response = client_for(member).post("/api/v1/registered-models/", {"project": project.slug, "name": "ß" * 100})
    expect(response, 400)
    assert "limit is 100" in response.json()["name"][0]
    assert not RegisteredModel.objects.exists()


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 201), ("approver", 201), ("owner", 201), ("outsider", 400)]
)
def test_create_promotion_request(role, code, users, version) -> None:
    response = client_for(users[role]).post(
        "/api/v1/promotion-requests/", {"version": version.pk, "target_stage": "staging", "comment": "try it"}
    )
    expect(response, code)
    assert PromotionRequest.objects.count() == (1 if code == 201 else 0)
    if code == 201:
        assert response.json()["gate_checks"]


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 201), ("approver", 201), ("owner", 201), ("outsider", 404)]
)
def test_request_an_alias_move(role, code, users, version) -> None:
    response = client_for(users[role]).post(f"/api/v1/model-versions/{version.pk}/aliases/", {"name": "champion"})
    expect(response, code)
    if code == 201:
        assert response.json()["target_alias"] == "champion"


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 403), ("approver", 200), ("owner", 200), ("outsider", 404)]
)
def test_approve(role, code, users, version, requester) -> None:
    promotion = services.promotion_request_create(version=version, actor=requester, target_stage="production")
    response = client_for(users[role]).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/", {"comment": "ok"})
    expect(response, code)
    promotion.refresh_from_db()
    assert promotion.status == (PromotionRequestStatus.APPROVED if code == 200 else PromotionRequestStatus.OPEN)
    if code == 200:
        assert response.json()["status"] == "approved"
        assert ModelVersion.objects.get(pk=version.pk).stage == "production"


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 403), ("approver", 200), ("owner", 200), ("outsider", 404)]
)
def test_reject(role, code, users, version, requester) -> None:
    promotion = services.promotion_request_create(version=version, actor=requester, target_stage="production")
    response = client_for(users[role]).post(f"/api/v1/promotion-requests/{promotion.pk}/reject/", {"comment": "no"})
    expect(response, code)
    promotion.refresh_from_db()
    rejected = code == 200
    assert promotion.status == (PromotionRequestStatus.REJECTED if rejected else PromotionRequestStatus.OPEN)
    assert (promotion.decided_by, promotion.decision_comment) == ((users[role], "no") if rejected else (None, ""))
    assert audited(promotion, "promotion_request.rejected") == ([users[role]] if rejected else [])
    assert ModelVersion.objects.get(pk=version.pk).stage == version.stage


@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 200), ("approver", 403), ("owner", 403), ("outsider", 404)]
)
def test_withdraw_only_by_the_requester(role, code, users, version) -> None:
    promotion = services.promotion_request_create(version=version, actor=users["member"], target_stage="production")
    response = client_for(users[role]).post(f"/api/v1/promotion-requests/{promotion.pk}/withdraw/")
    expect(response, code)
    promotion.refresh_from_db()
    withdrawn = code == 200
    assert promotion.status == (PromotionRequestStatus.WITHDRAWN if withdrawn else PromotionRequestStatus.OPEN)
    assert promotion.decided_by == (users["member"] if withdrawn else None)
    assert audited(promotion, "promotion_request.withdrawn") == ([users["member"]] if withdrawn else [])


def test_nobody_approves_their_own_request_through_the_api(version, approver) -> None:
    promotion = services.promotion_request_create(version=version, actor=approver, target_stage="production")
    response = client_for(approver).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/")
    expect(response, 403)
    assert "Four eyes" in response.json()["detail"]


def test_decisions_on_a_closed_request_conflict(version, member, approver, owner) -> None:
    promotion = services.promotion_request_create(version=version, actor=member, target_stage="production")
    expect(client_for(approver).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/"), 200)
    expect(client_for(owner).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/"), 409)
    expect(client_for(owner).post(f"/api/v1/promotion-requests/{promotion.pk}/reject/", {"comment": "x"}), 409)
    promotion.refresh_from_db()
    assert (promotion.status, promotion.decided_by) == (PromotionRequestStatus.APPROVED, approver)
    assert promotion.approvals.count() == 1


def test_promotion_request_bad_input(version, register, member, approver) -> None:
    client = client_for(member)
    other = register("other-model")
    cases = [
        ({"version": 999999, "target_stage": "production"}, 400, "version"),
        ({"version": version.pk, "model": other.model_id, "target_alias": "champion"}, 400, "version"),
        ({"version": version.pk, "target_stage": "nirvana"}, 400, "target_stage"),
        ({"version": version.pk, "target_alias": "Bad Alias"}, 400, "target_alias"),
    ]
    for body, code, field in cases:
        response = client.post("/api/v1/promotion-requests/", body)
        expect(response, code)
        assert field in response.json(), (body, response.json())
    assert PromotionRequest.objects.count() == 0
    expect(client.post("/api/v1/promotion-requests/", {"version": version.pk, "target_stage": "production"}), 201)
    duplicate = client.post("/api/v1/promotion-requests/", {"version": version.pk, "target_stage": "production"})
    expect(duplicate, 409)
    assert PromotionRequest.objects.count() == 1
    alias = client.post(f"/api/v1/model-versions/{version.pk}/aliases/", {"name": "champion", "model": other.model_id})
    expect(alias, 400)
    assert "version" in alias.json()


def test_failing_gates_answer_400_naming_override_reason(register, member, approver, owner) -> None:
    version = register(validation={"metrics": {"accuracy": 0.1}, "thresholds": {"accuracy": ">=0.9"}})
    promotion = services.promotion_request_create(version=version, actor=member, target_stage="production")
    response = client_for(approver).post(f"/api/v1/promotion-requests/{promotion.pk}/approve/")
    expect(response, 400)
    assert "override_reason" in response.json()
    response = client_for(owner).post(
        f"/api/v1/promotion-requests/{promotion.pk}/approve/", {"override_reason": "Accepted risk, see INC-42."}
    )
    expect(response, 200)
    assert response.json()["override_reason"] == "Accepted risk, see INC-42."


def test_inbox_filter_lists_what_the_user_can_decide(version, member, approver) -> None:
    services.promotion_request_create(version=version, actor=member, target_stage="production")
    assert client_for(approver).get("/api/v1/promotion-requests/", {"inbox": "1"}).json()["count"] == 1
    assert client_for(member).get("/api/v1/promotion-requests/", {"inbox": "1"}).json()["count"] == 0


@override_settings(WEBHOOK_ALLOW_PRIVATE=True)
@pytest.mark.parametrize(
    ("role", "code"), [("viewer", 403), ("member", 403), ("approver", 403), ("owner", 201), ("outsider", 400)]
)
def test_create_webhook(role, code, users, project) -> None:
    response = client_for(users[role]).post(
        "/api/v1/webhooks/", {"project": project.slug, "url": "http://127.0.0.1:9/hook"}, format="json"
    )
    expect(response, code)
    assert Webhook.objects.count() == (1 if code == 201 else 0)
    if code == 201:
        assert len(response.json()["secret"]) > 30


@pytest.mark.parametrize("role", ROLES)
def test_webhook_read_and_delete(role, users, project, owner) -> None:
    webhook = Webhook.objects.create(project=project, url="https://hooks.example.com/x", created_by=owner)
    client = client_for(users[role])
    visible = role != "outsider"
    detail = client.get(f"/api/v1/webhooks/{webhook.pk}/")
    expect(detail, 200 if visible else 404)
    if visible:
        # Only owners see the signing secret.
        assert (detail.json()["secret"] is not None) == (role == "owner")
    expect(client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/"), 200 if visible else 404)
    expect(client.delete(f"/api/v1/webhooks/{webhook.pk}/"), {"owner": 204, "outsider": 404}.get(role, 403))


@pytest.mark.parametrize("role", ROLES)
def test_notifications_are_per_user(role, users, version, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        services.promotion_request_create(version=version, actor=users["member"], target_stage="production")
    client = client_for(users[role])
    listed = client.get("/api/v1/notifications/").json()
    expected = 1 if role in ("approver", "owner") else 0
    assert listed["count"] == expected
    marked = client.post("/api/v1/notifications/read/", {}, format="json").json()
    assert marked["marked_read"] == expected


def test_schema_documents_the_registry() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    for path in (
        "/api/v1/registered-models/",
        "/api/v1/model-versions/",
        "/api/v1/model-versions/{id}/download/",
        "/api/v1/model-versions/{id}/aliases/",
        "/api/v1/promotion-requests/{id}/approve/",
        "/api/v1/promotion-requests/{id}/reject/",
        "/api/v1/promotion-requests/{id}/withdraw/",
        "/api/v1/webhooks/{id}/deliveries/",
    ):
        assert path in paths, path
    content = paths["/api/v1/model-versions/"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
