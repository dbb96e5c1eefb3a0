"""Promotion requests: who may ask and decide, gate checks and overrides, transitions, expiry, and bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.exceptions import Conflict
from apps.core.models import AuditEntry
from apps.registry import services
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus, RegistryEventType
from apps.registry.models import ModelAlias, ModelVersion, PromotionRequest, RegistryEvent
from apps.registry.tasks import promotion_requests_expire_task
from tests.factories import MembershipFactory, UserFactory
from tests.registry.registry_helpers import make_dataset_version

pytestmark = pytest.mark.django_db


def request(version, actor, **kwargs):
    kwargs.setdefault("target_stage", ModelVersionStage.PRODUCTION)
    return services.promotion_request_create(version=version, actor=actor, comment="ship it", **kwargs)


def approve(promotion, actor, **kwargs):
    return services.promotion_request_approve(request=promotion, actor=actor, **kwargs)


def refreshed(*objects):
    for obj in objects:
        obj.refresh_from_db()
    return objects


def test_request_then_approve_moves_the_stage_and_archives_the_previous_production(
    two_versions, member, approver
) -> None:
    v1, v2 = two_versions
    approve(request(v1, member), approver)
    promotion = request(v2, member)
    assert promotion.required_approvals == 1
    assert {c["name"]: c["status"] for c in promotion.gate_checks} == {
        "validation": "pass",
        "signature": "pass",
        "metrics": "pass",
        "dataset": "skip",
    }
    approve(promotion, approver, comment="looks good")
    refreshed(v1, v2, promotion)
    assert (v1.stage, v2.stage) == (ModelVersionStage.ARCHIVED, ModelVersionStage.PRODUCTION)
    assert promotion.status == PromotionRequestStatus.APPROVED
    assert promotion.previous_version == v1 and promotion.decided_by == approver
    stage_changes = AuditEntry.objects.filter(action="model_version.stage_changed").order_by("id")
    assert [(e.object_id, e.after["stage"]) for e in stage_changes] == [
        (str(v1.pk), "production"),
        (str(v1.pk), "archived"),
        (str(v2.pk), "production"),
    ]
    events = RegistryEvent.objects.filter(request=promotion).values_list("type", flat=True)
    assert set(events) >= {RegistryEventType.REQUEST_CREATED, RegistryEventType.STAGE_CHANGED}
    assert RegistryEvent.objects.filter(type=RegistryEventType.REQUEST_APPROVED, request=promotion).exists()


def test_the_database_allows_one_production_version_per_model(two_versions) -> None:
    v1, v2 = two_versions
    ModelVersion.objects.filter(pk=v1.pk).update(stage=ModelVersionStage.PRODUCTION)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=v2.pk).update(stage=ModelVersionStage.PRODUCTION)


def test_a_viewer_cannot_request(two_versions, viewer) -> None:
    with pytest.raises(PermissionDenied):
        request(two_versions[0], viewer)
    assert not PromotionRequest.objects.exists()


def test_an_editor_cannot_approve_and_nobody_approves_their_own_request(two_versions, member, approver, owner) -> None:
    promotion = request(two_versions[0], member)
    with pytest.raises(PermissionDenied):
        approve(promotion, member)  # an editor, and the requester
    own = request(two_versions[1], approver, target_stage=ModelVersionStage.STAGING)
    with pytest.raises(PermissionDenied, match="Four eyes"):
        approve(own, approver)
    with pytest.raises(PermissionDenied, match="Four eyes"):
        services.promotion_request_reject(request=own, actor=approver, comment="no")
    approve(own, owner)
    refreshed(own, promotion)
    assert own.status == PromotionRequestStatus.APPROVED
    assert promotion.status == PromotionRequestStatus.OPEN


def test_production_needs_the_projects_number_of_approvals(two_versions, project, member, approver, owner) -> None:
    project.required_approvals = 2
    project.save()
    promotion = request(two_versions[0], member)
    assert promotion.required_approvals == 2
    approve(promotion, approver)
    refreshed(promotion, two_versions[0])
    assert promotion.status == PromotionRequestStatus.OPEN and two_versions[0].stage == ModelVersionStage.NONE
    with pytest.raises(Conflict, match="already decided"):
        approve(promotion, approver)
    approve(promotion, owner)
    refreshed(promotion, two_versions[0])
    assert promotion.status == PromotionRequestStatus.APPROVED
    assert two_versions[0].stage == ModelVersionStage.PRODUCTION
    # Other moves need one approval whatever the project setting.
    assert request(two_versions[1], member, target_stage=ModelVersionStage.STAGING).required_approvals == 1


def test_a_failing_gate_blocks_approval_unless_an_owner_overrides_with_a_reason(
    register, member, approver, owner
) -> None:
    version = register(validation={"metrics": {"accuracy": 0.5}, "thresholds": {"accuracy": ">=0.9"}})
    promotion = request(version, member)
    assert promotion.failed_gates[0]["name"] == "validation"
    with pytest.raises(ValidationError) as error:
        approve(promotion, approver)
    assert "override_reason" in error.value.message_dict
    with pytest.raises(PermissionDenied, match="only a project owner"):
        approve(promotion, approver, override_reason="we need it")
    with pytest.raises(ValidationError):
        approve(promotion, owner)  # an owner too must write a reason
    refreshed(promotion, version)
    assert promotion.status == PromotionRequestStatus.OPEN and version.stage == ModelVersionStage.NONE
    approve(promotion, owner, override_reason="Hotfix for the outage; threshold revisited next sprint.")
    refreshed(promotion, version)
    assert version.stage == ModelVersionStage.PRODUCTION
    assert promotion.override_reason.startswith("Hotfix") and promotion.overridden_by == owner
    assert AuditEntry.objects.filter(action="promotion_request.gate_overridden", object_id=str(promotion.pk)).exists()


def test_an_incompatible_signature_fails_the_gate(register, member, approver) -> None:
    current = register()
    approve(request(current, member), approver)
    narrower = register(bundle="bundle_3_features")
    bigger = register(bundle="bundle_v2")
    checks = {c["name"]: c for c in request(narrower, member).gate_checks}
    # Dropping an input is compatible (the extra column is ignored); adding one is not, see below.
    assert checks["signature"]["status"] == "pass"
    approve(PromotionRequest.objects.get(version=narrower), approver)
    checks = {c["name"]: c for c in request(bigger, member).gate_checks}
    assert checks["signature"]["status"] == "fail"
    assert "added petal_width" in checks["signature"]["message"]


def test_a_dataset_that_failed_blocking_validation_fails_the_gate(register, member) -> None:
    version = register()
    version.dataset_version = make_dataset_version(project=version.model.project, blocking_failed=True)
    version.save()
    checks = {c["name"]: c["status"] for c in request(version, member).gate_checks}
    assert checks["dataset"] == "fail"


def test_metrics_are_compared_per_metric_with_direction(two_versions, member, approver) -> None:
    v1, v2 = two_versions
    approve(request(v2, member), approver)
    checks = {c["name"]: c for c in request(v1, member).gate_checks}
    rows = {row["name"]: row["verdict"] for row in checks["metrics"]["details"]["comparison"]}
    assert rows == {"accuracy": "worse", "log_loss": "worse"}  # lower log_loss is better, v1's is higher
    assert checks["metrics"]["status"] == "warn"  # informative, not blocking


def test_alias_moves_through_a_request(two_versions, member, approver) -> None:
    v1, v2 = two_versions
    approve(request(v1, member, target_stage="", target_alias="champion"), approver)
    assert ModelAlias.objects.get(name="champion").version == v1
    promotion = request(v2, member, target_stage="", target_alias="champion")
    approve(promotion, approver)
    promotion.refresh_from_db()
    assert ModelAlias.objects.get(name="champion").version == v2
    assert promotion.previous_version == v1
    event = RegistryEvent.objects.get(type=RegistryEventType.ALIAS_CHANGED, request=promotion)
    assert event.payload["from_version"] == 1 and event.payload["to_version"] == 2


def test_bad_requests_name_the_field_and_change_nothing(two_versions, register, member, approver) -> None:
    v1, v2 = two_versions
    other = register("another-model")
    cases = [
        ({"target_stage": "", "target_alias": "champion", "model": other.model}, "version"),
        ({"target_stage": "", "target_alias": "Champion!"}, "target_alias"),
        ({"target_stage": "heaven"}, "target_stage"),
        ({"target_stage": ModelVersionStage.NONE}, "target_stage"),
        ({"target_stage": "production", "target_alias": "champion"}, "target_stage"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValidationError) as error:
            request(v1, member, **kwargs)
        assert field in error.value.message_dict, kwargs
    approve(request(v1, member), approver)
    approve(request(v2, member), approver)  # v1 is archived now
    with pytest.raises(ValidationError) as error:
        request(v1, member)
    assert "archived" in error.value.message_dict["version"][0]
    assert PromotionRequest.objects.count() == 2


def test_a_second_open_request_for_the_same_transition_conflicts(two_versions, member, approver) -> None:
    promotion = request(two_versions[0], member)
    with pytest.raises(Conflict):
        request(two_versions[0], approver)
    # The database enforces it as well.
    duplicate = PromotionRequest(
        model=promotion.model,
        version=promotion.version,
        target_stage="production",
        transition=promotion.transition,
        expires_at=promotion.expires_at,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()
    # Another transition of the same version is fine.
    request(two_versions[0], member, target_stage=ModelVersionStage.STAGING)


def test_reject_needs_a_comment_and_closes_the_request(two_versions, member, approver) -> None:
    promotion = request(two_versions[0], member)
    with pytest.raises(ValidationError) as error:
        services.promotion_request_reject(request=promotion, actor=approver, comment="  ")
    assert "comment" in error.value.message_dict
    services.promotion_request_reject(request=promotion, actor=approver, comment="metrics too close")
    promotion.refresh_from_db()
    assert promotion.status == PromotionRequestStatus.REJECTED and promotion.decision_comment == "metrics too close"
    with pytest.raises(Conflict):
        approve(promotion, approver)


def test_only_the_requester_withdraws(two_versions, member, approver, project) -> None:
    promotion = request(two_versions[0], member)
    other_editor = UserFactory(username="other-editor")
    MembershipFactory(project=project, user=other_editor, role="editor")
    with pytest.raises(PermissionDenied):
        services.promotion_request_withdraw(request=promotion, actor=other_editor)
    with pytest.raises(PermissionDenied):
        services.promotion_request_withdraw(request=promotion, actor=approver)
    services.promotion_request_withdraw(request=promotion, actor=member, comment="not yet")
    promotion.refresh_from_db()
    assert promotion.status == PromotionRequestStatus.WITHDRAWN
    assert RegistryEvent.objects.filter(type=RegistryEventType.REQUEST_WITHDRAWN).exists()
    with pytest.raises(Conflict):
        services.promotion_request_withdraw(request=promotion, actor=member)


def test_requests_expire_at_approval_time_and_by_the_beat_task(two_versions, member, approver, settings) -> None:
    assert settings.REGISTRY_REQUEST_TTL_HOURS == 72
    first = request(two_versions[0], member)
    assert timedelta(hours=71) < first.expires_at - timezone.now() <= timedelta(hours=72)
    second = request(two_versions[1], member)
    PromotionRequest.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    with pytest.raises(Conflict, match="expired"):
        approve(first, approver)
    refreshed(first, two_versions[0])
    assert first.status == PromotionRequestStatus.EXPIRED  # recorded although the approval failed
    assert two_versions[0].stage == ModelVersionStage.NONE
    assert promotion_requests_expire_task.delay().get() == 1
    second.refresh_from_db()
    assert second.status == PromotionRequestStatus.EXPIRED
    assert RegistryEvent.objects.filter(type=RegistryEventType.REQUEST_EXPIRED).count() == 2
    assert promotion_requests_expire_task.delay().get() == 0  # safe to run twice


def test_admin_actions_call_the_same_service(two_versions, member, approver, client) -> None:
    promotion = request(two_versions[0], member)
    approver.is_staff = True
    approver.is_superuser = True
    approver.save()
    client.force_login(approver)
    response = client.post(
        "/admin/registry/promotionrequest/",
        {"action": "approve_requests", "_selected_action": [promotion.pk]},
        follow=True,
    )
    assert response.status_code == 200
    refreshed(promotion, two_versions[0])
    assert promotion.status == PromotionRequestStatus.APPROVED
    assert two_versions[0].stage == ModelVersionStage.PRODUCTION
    # The requester cannot approve their own request in the admin either.
    member.is_staff = member.is_superuser = True
    member.save()
    own = request(two_versions[1], member)
    client.force_login(member)
    client.post("/admin/registry/promotionrequest/", {"action": "approve_requests", "_selected_action": [own.pk]})
    own.refresh_from_db()
    assert own.status == PromotionRequestStatus.OPEN
