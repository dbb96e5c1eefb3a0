"""The registry pages: who sees what, the approval flow through forms, badges, markdown, compare."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.registry import services
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import PromotionRequest, RegisteredModel
from tests.factories import RegisteredModelFactory

pytestmark = pytest.mark.django_db


def browser(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", ["viewer", "member", "approver", "owner"])
def test_members_see_every_page(role, request, two_versions) -> None:
    user = request.getfixturevalue(role)
    other = request.getfixturevalue("member" if role != "member" else "approver")
    v1, v2 = two_versions
    promotion = services.promotion_request_create(version=v1, actor=other, target_stage="production")
    client = browser(user)
    for url in (
        reverse("registry:model-list"),
        v1.model.get_absolute_url(),
        v1.get_absolute_url(),
        reverse("registry:version-compare", args=[v1.model_id]) + "?a=1&b=2",
        reverse("registry:approval-inbox"),
        promotion.get_absolute_url(),
        reverse("registry:notification-list"),
    ):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    detail = client.get(promotion.get_absolute_url()).content
    assert (b'data-testid="decision-form"' in detail) == (role in ("approver", "owner"))


def test_outsiders_get_404(outsider, two_versions) -> None:
    v1, _ = two_versions
    promotion = PromotionRequest.objects.create(
        model=v1.model, version=v1, target_stage="staging", transition="stage:staging", expires_at="2099-01-01T00:00Z"
    )
    client = browser(outsider)
    for url in (
        v1.model.get_absolute_url(),
        v1.get_absolute_url(),
        reverse("registry:version-compare", args=[v1.model_id]),
        promotion.get_absolute_url(),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(f"{v1.get_absolute_url()}load-test/").status_code == 404
    assert client.post(reverse("registry:request-approve", args=[promotion.pk])).status_code == 404
    assert b"iris-classifier" not in client.get(reverse("registry:model-list")).content


def test_approval_flow_through_the_pages(two_versions, member, approver, django_capture_on_commit_callbacks) -> None:
    v1, _ = two_versions
    with django_capture_on_commit_callbacks(execute=True):
        response = browser(member).post(
            reverse("registry:request-create", args=[v1.model_id, 1]), {"target_stage": "production", "comment": "ship"}
        )
    promotion = PromotionRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == promotion.get_absolute_url()
    approver_client = browser(approver)
    home = approver_client.get(reverse("registry:approval-inbox")).content.decode()
    assert 'data-testid="nav-badge-approvals">1<' in home
    assert 'data-testid="nav-badge-notifications">1<' in home
    # The requester cannot decide, and is told why.
    assert b"four eyes" in browser(member).get(promotion.get_absolute_url()).content
    response = approver_client.post(reverse("registry:request-approve", args=[promotion.pk]), {"comment": "ok"})
    assert response.status_code == 302
    v1.refresh_from_db()
    assert v1.stage == ModelVersionStage.PRODUCTION
    assert b'data-testid="nav-badge-approvals"' not in approver_client.get(reverse("registry:model-list")).content


def test_page_errors_are_shown_not_raised(register, member, approver) -> None:
    version = register(validation={"metrics": {"accuracy": 0.1}, "thresholds": {"accuracy": ">=0.9"}})
    url = reverse("registry:request-create", args=[version.model_id, 1])
    assert browser(member).post(url, {"target_stage": "production"}).status_code == 302
    duplicate = browser(member).post(url, {"target_stage": "production"})
    assert duplicate.status_code == 409 and b"open request" in duplicate.content
    bad = browser(member).post(url, {"target_stage": "", "target_alias": "Not Valid"})
    assert bad.status_code == 400
    promotion = PromotionRequest.objects.get()
    blocked = browser(approver).post(reverse("registry:request-approve", args=[promotion.pk]), {})
    assert blocked.status_code == 400 and b"Gate checks failed" in blocked.content
    promotion.refresh_from_db()
    assert promotion.status == PromotionRequestStatus.OPEN
    withdrawn = browser(member).post(reverse("registry:request-withdraw", args=[promotion.pk]))
    assert withdrawn.status_code == 302


def test_markdown_descriptions_are_sanitised(register, member) -> None:
    version = register(description="# Notes\n<script>alert(1)</script>\n[x](javascript:alert(1)) **bold**")
    content = browser(member).get(version.get_absolute_url()).content.decode()
    assert "<strong>bold</strong>" in content and "<h1>Notes</h1>" in content
    assert "<script>alert(1)</script>" not in content and "javascript:alert" not in content


def test_compare_warns_about_incompatible_signatures(register, member) -> None:
    register(bundle="bundle_3_features")
    register()
    model = RegisteredModel.objects.get()
    content = browser(member).get(reverse("registry:version-compare", args=[model.pk]) + "?a=1&b=2").content
    assert b'data-testid="signature-warning"' in content and b"added petal_width" in content


def test_model_list_searches_paginates_and_keeps_queries_flat(
    project, member, django_assert_max_num_queries, register
) -> None:
    register("iris-classifier")
    for _ in range(30):
        RegisteredModelFactory(project=project)
    client = browser(member)
    assert b"iris-classifier" in client.get(reverse("registry:model-list"), {"q": "IRIS"}).content
    assert b"iris-classifier" not in client.get(reverse("registry:model-list"), {"q": "nothing"}).content
    with django_assert_max_num_queries(14):
        page = client.get(reverse("registry:model-list"))
    assert b"Page 1 of 2" in page.content


def test_upload_form_registers_and_refuses_with_the_reason(project, member, model_file, tmp_path) -> None:
    client = browser(member)
    with open(model_file("bundle"), "rb") as handle:
        response = client.post(
            reverse("registry:model-register"), {"project": project.pk, "model_name": "uploaded", "file": handle}
        )
    assert response.status_code == 302
    pickle_path = tmp_path / "m.pkl"
    import pickle

    pickle_path.write_bytes(pickle.dumps({"a": 1}))
    with open(pickle_path, "rb") as handle:
        response = client.post(
            reverse("registry:model-register"), {"project": project.pk, "model_name": "bad", "file": handle}
        )
    assert response.status_code == 400 and b"refused" in response.content


def test_navigation_badges_cost_one_query(approver, member, two_versions, rf, django_assert_num_queries) -> None:
    from apps.core.navigation import navigation_items

    services.promotion_request_create(version=two_versions[0], actor=member, target_stage="production")
    request = rf.get("/models/")
    request.user = approver
    with django_assert_num_queries(1):
        badges = {item["label"]: item["badge"] for item in navigation_items(request)}
    assert badges["Approvals"] == 1 and badges["Notifications"] == 0
