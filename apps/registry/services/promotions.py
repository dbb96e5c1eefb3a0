"""Use cases of promotion requests: create, approve, reject, withdraw, expire.

Transitions lock their rows in one order (model, request, versions, alias) so that two of them never
deadlock, and two approvals racing each other give exactly one transition.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict, PermissionDenied
from apps.core.models import Project
from apps.core.permissions import has_project_role, require_project_role
from apps.core.services import audit_record
from apps.registry import selectors
from apps.registry.choices import (
    GateCheckStatus,
    ModelVersionStage,
    PromotionDecision,
    PromotionRequestStatus,
    RegistryEventType,
)
from apps.registry.events import event_emit
from apps.registry.models import (
    ALIAS_PATTERN,
    ModelAlias,
    ModelVersion,
    PromotionApproval,
    PromotionRequest,
    RegisteredModel,
)

# Promotion requests


def _transition_key(target_stage: str, target_alias: str) -> str:
    return f"stage:{target_stage}" if target_stage else f"alias:{target_alias}"


def _ttl() -> timedelta:
    return timedelta(hours=settings.REGISTRY_REQUEST_TTL_HOURS)


@transaction.atomic
def promotion_request_create(
    *,
    version: ModelVersion,
    actor: AbstractBaseUser,
    target_stage: str = "",
    target_alias: str = "",
    comment: str = "",
    model: RegisteredModel | None = None,
) -> PromotionRequest:
    """Ask for `version` to move to a stage or for an alias to point at it (editors). Gate checks are recorded."""
    project = version.model.project
    require_project_role(actor, project, ProjectRole.EDITOR)
    if model is not None and model.pk != version.model_id:
        raise ValidationError(
            {"version": f"{version} belongs to model {version.model.name}, not {model.name}; pick one of its versions."}
        )
    target_stage, target_alias = (target_stage or "").strip(), (target_alias or "").strip()
    if bool(target_stage) == bool(target_alias):
        raise ValidationError({"target_stage": "Give either a target stage or a target alias, not both or neither."})
    version = ModelVersion.objects.select_for_update().select_related("model__project").get(pk=version.pk)
    if target_stage:
        if target_stage not in ModelVersionStage.values:
            choices = ", ".join(ModelVersionStage.values)
            raise ValidationError({"target_stage": f"Unknown stage {target_stage!r}; choose one of {choices}."})
        if version.stage == target_stage:
            raise ValidationError({"target_stage": f"{version} is already in {target_stage}."})
        if version.stage == ModelVersionStage.ARCHIVED and target_stage in (
            ModelVersionStage.STAGING,
            ModelVersionStage.PRODUCTION,
        ):
            raise ValidationError(
                {"version": f"{version} is archived; archived versions cannot be promoted. Register it again."}
            )
    else:
        if not re.match(ALIAS_PATTERN, target_alias):
            raise ValidationError(
                {"target_alias": "An alias is 1–40 lowercase letters, digits, '_' or '-', starting with a letter."}
            )
        if version.stage == ModelVersionStage.ARCHIVED:
            raise ValidationError({"version": f"{version} is archived; an alias cannot point at it."})
        if ModelAlias.objects.filter(model_id=version.model_id, name=target_alias, version=version).exists():
            raise ValidationError({"target_alias": f"@{target_alias} already points at {version}."})
    transition = _transition_key(target_stage, target_alias)
    if PromotionRequest.objects.open().filter(version=version, transition=transition).exists():
        raise Conflict(f"An open request to move {version} to {target_stage or '@' + target_alias} exists.")
    required = project.required_approvals if target_stage == ModelVersionStage.PRODUCTION else 1
    try:
        with transaction.atomic():
            request = PromotionRequest.objects.create(
                model=version.model,
                version=version,
                target_stage=target_stage,
                target_alias=target_alias,
                transition=transition,
                comment=comment.strip(),
                required_approvals=max(1, required),
                gate_checks=selectors.promotion_gate_checks(version=version, target_stage=target_stage),
                requested_by=actor,
                expires_at=timezone.now() + _ttl(),
            )
    except IntegrityError:
        raise Conflict(f"An open request to move {version} to that target exists.") from None
    audit_record(
        actor=actor,
        action="promotion_request.created",
        obj=request,
        project=project,
        after={"version": version.number, "target": request.target_display, "comment": request.comment},
    )
    event_emit(
        type=RegistryEventType.REQUEST_CREATED,
        project=project,
        actor=actor,
        model=version.model,
        version=version,
        request=request,
        payload={
            "summary": f"{actor.get_username()} asks to move {version} to {request.target_display}.",
            "comment": request.comment,
        },
    )
    return request


def _require_decider(request: PromotionRequest, actor: AbstractBaseUser, project: Project) -> None:
    require_project_role(actor, project, ProjectRole.APPROVER)
    if request.requested_by_id is not None and request.requested_by_id == actor.pk:
        raise PermissionDenied("Four eyes: you cannot approve or reject your own request.")


def _close_locked(
    request: PromotionRequest,
    *,
    status: str,
    actor: AbstractBaseUser | None,
    event_type: str,
    summary: str,
    comment: str = "",
    audit_after: dict | None = None,
    **fields: object,
) -> None:
    """End an open request (its row locked by the caller): save who and when, audit it and tell the watchers."""
    request.status = status
    request.decided_at, request.decided_by, request.decision_comment = timezone.now(), actor, comment
    for name, value in fields.items():
        setattr(request, name, value)
    request.save()
    project = request.model.project
    audit_record(
        actor=actor,
        action=f"promotion_request.{status}",
        obj=request,
        project=project,
        before={"status": PromotionRequestStatus.OPEN},
        after=audit_after or {"status": status},
        message=comment,
    )
    payload = {"summary": summary, **({"comment": comment} if comment else {})}
    event_emit(
        type=event_type,
        project=project,
        actor=actor,
        model=request.model,
        version=request.version,
        request=request,
        payload=payload,
    )


def _expire_locked(request: PromotionRequest) -> None:
    _close_locked(
        request,
        status=PromotionRequestStatus.EXPIRED,
        actor=None,
        event_type=RegistryEventType.REQUEST_EXPIRED,
        summary=f"The request to move {request.version} to {request.target_display} expired.",
        audit_after={"status": PromotionRequestStatus.EXPIRED, "expires_at": request.expires_at.isoformat()},
    )


def _apply_transition(
    request: PromotionRequest, model: RegisteredModel, locked: list[ModelVersion], actor: AbstractBaseUser
) -> None:
    """Move the stage or the alias. The rows are locked by the caller."""
    project = model.project
    version = next(v for v in locked if v.pk == request.version_id)
    now = timezone.now()
    if request.target_stage:
        target = request.target_stage
        if target == ModelVersionStage.PRODUCTION:
            for previous in (v for v in locked if v.stage == ModelVersionStage.PRODUCTION and v.pk != version.pk):
                # Archived before the new one moves in: the partial unique constraint allows one production row.
                _stage_set(previous, ModelVersionStage.ARCHIVED, actor=actor, request=request, now=now)
                request.previous_version = previous
        _stage_set(version, target, actor=actor, request=request, now=now)
        return
    alias = ModelAlias.objects.select_for_update().filter(model=model, name=request.target_alias).first()
    previous_version = alias.version if alias else None
    if alias is None:
        alias = ModelAlias.objects.create(model=model, name=request.target_alias, version=version, updated_by=actor)
    else:
        alias.version, alias.updated_by = version, actor
        alias.save(update_fields=["version", "updated_by", "updated_at"])
    request.previous_version = previous_version
    audit_record(
        actor=actor,
        action="model_alias.moved",
        obj=alias,
        project=project,
        before={"version": previous_version.number if previous_version else None},
        after={"version": version.number},
        message=f"approved request #{request.pk}",
    )
    event_emit(
        type=RegistryEventType.ALIAS_CHANGED,
        project=project,
        actor=actor,
        model=model,
        version=version,
        request=request,
        payload={
            "summary": f"@{alias.name} of {model.name} now points at version {version.number}.",
            "alias": alias.name,
            "from_version": previous_version.number if previous_version else None,
            "to_version": version.number,
        },
    )


def _stage_set(
    version: ModelVersion, stage: str, *, actor: AbstractBaseUser, request: PromotionRequest, now: Any
) -> None:
    old = version.stage
    version.stage, version.stage_changed_at = stage, now
    version.save(update_fields=["stage", "stage_changed_at"])
    project = version.model.project
    audit_record(
        actor=actor,
        action="model_version.stage_changed",
        obj=version,
        project=project,
        before={"stage": old},
        after={"stage": stage},
        message=f"approved request #{request.pk}",
    )
    event_emit(
        type=RegistryEventType.STAGE_CHANGED,
        project=project,
        actor=actor,
        model=version.model,
        version=version,
        request=request,
        payload={
            "summary": f"{version} moved from {old} to {stage}.",
            "from_stage": old,
            "to_stage": stage,
        },
    )


def promotion_request_approve(
    *, request: PromotionRequest, actor: AbstractBaseUser, comment: str = "", override_reason: str = ""
) -> PromotionRequest:
    """Record an approval; with enough approvals, make the transition. Raises Conflict when the request
    is no longer open (it was decided, withdrawn or has expired: expiry is recorded first), PermissionDenied for
    a non-approver or the requester, and ValidationError when a gate fails and no owner overrides it."""
    expired = False
    with transaction.atomic():
        model = RegisteredModel.objects.select_for_update().select_related("project").get(pk=request.model_id)
        project = model.project
        request = PromotionRequest.objects.select_for_update().select_related("model__project").get(pk=request.pk)
        _require_decider(request, actor, project)
        if request.status != PromotionRequestStatus.OPEN:
            raise Conflict(f"Request #{request.pk} is {request.status}; it can no longer be approved.")
        if request.expires_at <= timezone.now():
            _expire_locked(request)
            expired = True
        else:
            _approve_locked(request, model, actor, comment=comment.strip(), override_reason=override_reason.strip())
    if expired:
        raise Conflict(f"Request #{request.pk} expired at {request.expires_at:%Y-%m-%d %H:%M} UTC.")
    return request


def _approve_locked(
    request: PromotionRequest, model: RegisteredModel, actor: AbstractBaseUser, *, comment: str, override_reason: str
) -> None:
    project = model.project
    if request.approvals.filter(approver=actor).exists():
        raise Conflict(f"You have already decided on request #{request.pk}.")
    locked = list(
        model.versions.select_for_update()
        .filter(Q(pk=request.version_id) | Q(stage=ModelVersionStage.PRODUCTION))
        .order_by("pk")
    )
    version = next(v for v in locked if v.pk == request.version_id)
    if version.stage == ModelVersionStage.ARCHIVED and request.target_stage != ModelVersionStage.NONE:
        raise Conflict(f"{version} was archived after the request was made; it can no longer be promoted.")
    if request.target_stage and version.stage == request.target_stage:
        raise Conflict(f"{version} is already in {version.stage}.")
    checks = selectors.promotion_gate_checks(version=version, target_stage=request.target_stage)
    failed = [check for check in checks if check["status"] == GateCheckStatus.FAIL]
    if failed and not request.override_reason:
        names = ", ".join(check["name"] for check in failed)
        if not override_reason:
            raise ValidationError(
                {
                    "override_reason": f"Gate checks failed ({names}). Only an owner can approve anyway, "
                    "with a written reason."
                }
            )
        if not has_project_role(actor, project, ProjectRole.OWNER):
            raise PermissionDenied(f"Gate checks failed ({names}); only a project owner can override them.")
        request.override_reason, request.overridden_by = override_reason, actor
        audit_record(
            actor=actor,
            action="promotion_request.gate_overridden",
            obj=request,
            project=project,
            after={"failed": [check["name"] for check in failed], "reason": override_reason},
            message=override_reason,
        )
    PromotionApproval.objects.create(
        request=request, approver=actor, decision=PromotionDecision.APPROVE, comment=comment
    )
    request.decision_gate_checks = checks
    approvals = request.approvals.filter(decision=PromotionDecision.APPROVE).count()
    audit_record(
        actor=actor,
        action="promotion_request.approval_recorded",
        obj=request,
        project=project,
        after={"approvals": approvals, "required": request.required_approvals},
        message=comment,
    )
    if approvals < request.required_approvals:
        request.save(update_fields=["decision_gate_checks", "override_reason", "overridden_by"])
        return
    _apply_transition(request, model, locked, actor)
    request.status = PromotionRequestStatus.APPROVED
    request.decided_at, request.decided_by, request.decision_comment = timezone.now(), actor, comment
    request.save()
    audit_record(
        actor=actor,
        action="promotion_request.approved",
        obj=request,
        project=project,
        before={"status": PromotionRequestStatus.OPEN},
        after={"status": request.status, "target": request.target_display},
        message=comment,
    )
    event_emit(
        type=RegistryEventType.REQUEST_APPROVED,
        project=project,
        actor=actor,
        model=model,
        version=version,
        request=request,
        payload={
            "summary": f"{actor.get_username()} approved moving {version} to {request.target_display}.",
            "comment": comment,
            "override_reason": request.override_reason,
        },
    )


def promotion_request_reject(*, request: PromotionRequest, actor: AbstractBaseUser, comment: str) -> PromotionRequest:
    """Reject an open request (approvers other than the requester); one rejection closes it."""
    comment = (comment or "").strip()
    expired = False
    with transaction.atomic():
        request = (
            PromotionRequest.objects.select_for_update().select_related("model__project", "version").get(pk=request.pk)
        )
        project = request.model.project
        _require_decider(request, actor, project)
        if not comment:
            raise ValidationError({"comment": "Say why you reject the request; the requester will read it."})
        if request.status != PromotionRequestStatus.OPEN:
            raise Conflict(f"Request #{request.pk} is {request.status}; it can no longer be rejected.")
        if request.expires_at <= timezone.now():
            _expire_locked(request)
            expired = True
        else:
            if request.approvals.filter(approver=actor).exists():
                raise Conflict(f"You have already decided on request #{request.pk}.")
            PromotionApproval.objects.create(
                request=request, approver=actor, decision=PromotionDecision.REJECT, comment=comment
            )
            _close_locked(
                request,
                status=PromotionRequestStatus.REJECTED,
                actor=actor,
                event_type=RegistryEventType.REQUEST_REJECTED,
                summary=f"{actor.get_username()} rejected moving {request.version} to {request.target_display}.",
                comment=comment,
                decision_gate_checks=selectors.promotion_gate_checks(
                    version=request.version, target_stage=request.target_stage
                ),
            )
    if expired:
        raise Conflict(f"Request #{request.pk} expired at {request.expires_at:%Y-%m-%d %H:%M} UTC.")
    return request


@transaction.atomic
def promotion_request_withdraw(
    *, request: PromotionRequest, actor: AbstractBaseUser, comment: str = ""
) -> PromotionRequest:
    request = (
        PromotionRequest.objects.select_for_update().select_related("model__project", "version").get(pk=request.pk)
    )
    project = request.model.project
    require_project_role(actor, project, ProjectRole.VIEWER)
    if request.requested_by_id != actor.pk:
        raise PermissionDenied("Only the requester can withdraw a request.")
    if request.status != PromotionRequestStatus.OPEN:
        raise Conflict(f"Request #{request.pk} is {request.status}; it can no longer be withdrawn.")
    _close_locked(
        request,
        status=PromotionRequestStatus.WITHDRAWN,
        actor=actor,
        event_type=RegistryEventType.REQUEST_WITHDRAWN,
        summary=f"{actor.get_username()} withdrew the request to move {request.version}.",
        comment=comment.strip(),
    )
    return request


def promotion_request_expire(*, request_id: int) -> bool:
    """Expire one request if it is open and past its time; True when this call expired it."""
    with transaction.atomic():
        request = (
            PromotionRequest.objects.select_for_update(skip_locked=True)
            .select_related("model__project", "version")
            .filter(pk=request_id, status=PromotionRequestStatus.OPEN, expires_at__lte=timezone.now())
            .first()
        )
        if request is None:
            return False
        _expire_locked(request)
        return True


def promotion_requests_expire_due() -> int:
    due = PromotionRequest.objects.open().filter(expires_at__lte=timezone.now()).values_list("pk", flat=True)
    return sum(promotion_request_expire(request_id=pk) for pk in list(due))
