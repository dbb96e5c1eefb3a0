"""Use cases of the core app: projects, memberships, API tokens, the audit log and verified artifacts."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model, Q
from django.utils import timezone
from django.utils.text import slugify

from apps.core.artifacts import ArtifactIntegrityError, get_artifact_store
from apps.core.choices import ProjectRole
from apps.core.middleware import current_ip
from apps.core.models import APIToken, AuditEntry, Membership, Project
from apps.core.permissions import require_project_role

# The length of every user-given name and of its compared form (`name` and `name_key` columns).
NAME_MAX_LENGTH = 100


def normalize_name(value: str) -> str:
    """The form in which two names are compared: URL-decoded, Unicode NFKC, case-folded, trimmed.

    Names that differ only in these ways would look the same to a person, so they must not coexist.
    """
    return unicodedata.normalize("NFKC", unquote(value)).casefold().strip()


def clean_name(value: Any, *, missing: str, field: str = "name", max_length: int = NAME_MAX_LENGTH) -> tuple[str, str]:
    """A user-given name as stored (NFKC, trimmed) and its compared form (`normalize_name`), both checked.

    Both must fit `max_length`: case folding can lengthen a name ('ß' compares as 'ss'), so a name that fits
    as typed can still be too long as compared. Errors name `field`; `missing` is the message for no name.
    """
    name = unicodedata.normalize("NFKC", str(value or "")).strip()
    if not name:
        raise ValidationError({field: missing})
    if len(name) > max_length:
        raise ValidationError({field: f"The name is {len(name)} characters long; the limit is {max_length}."})
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValidationError({field: "The name contains control characters."})
    key = normalize_name(name)
    if len(key) > max_length:
        raise ValidationError(
            {
                field: f"The name is {len(key)} characters long as compared, where case is folded ('ß' becomes "
                f"'ss'); the limit is {max_length}."
            }
        )
    return name, key


def _audit_entry(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    obj: Any,
    project: Project | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    message: str,
) -> AuditEntry:
    actor = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEntry(
        project=project,
        actor=actor,
        actor_name=actor.get_username() if actor else "",
        action=action,
        object_type=obj._meta.label_lower if hasattr(obj, "_meta") else type(obj).__name__.lower(),
        object_id=str(getattr(obj, "pk", "") or ""),
        object_repr=str(obj)[:200],
        before=before,
        after=after,
        message=message,
        ip_address=current_ip.get(),
    )


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    obj: Any,
    project: Project | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    message: str = "",
) -> AuditEntry:
    entry = _audit_entry(
        actor=actor, action=action, obj=obj, project=project, before=before, after=after, message=message
    )
    entry.save()
    return entry


def audit_record_many(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    project: Project | None,
    changes: list[tuple[Any, dict[str, Any], dict[str, Any]]],
    message: str = "",
) -> list[AuditEntry]:
    """One entry per (obj, before, after), written in batches: a bulk change audits every object it changed
    without one INSERT each."""
    entries = [
        _audit_entry(actor=actor, action=action, obj=obj, project=project, before=before, after=after, message=message)
        for obj, before, after in changes
    ]
    return AuditEntry.objects.bulk_create(entries, batch_size=500)


def audited_update(
    *, obj: Model, actor: AbstractBaseUser | None, action: str, project: Project | None, changes: dict[str, Any]
) -> dict[str, Any]:
    """Set the fields of `changes` that differ on `obj` (locked by the caller), save them and audit before/after.

    Returns what changed; when nothing does, nothing is saved or audited. `auto_now` fields (`updated_at`) are
    saved along, since `update_fields` would leave them out.
    """
    before = {field: getattr(obj, field) for field, value in changes.items() if getattr(obj, field) != value}
    after = {field: changes[field] for field in before}
    if after:
        for field, value in after.items():
            setattr(obj, field, value)
        touched = [f.name for f in obj._meta.concrete_fields if getattr(f, "auto_now", False)]
        obj.save(update_fields=[*after, *touched])
        audit_record(actor=actor, action=action, obj=obj, project=project, before=before, after=after)
    return after


@transaction.atomic
def project_create(*, name: str, description: str = "", owner: AbstractBaseUser) -> Project:
    name, name_key = clean_name(name, missing="A project needs a name.")
    slug = slugify(name)[:100]
    if not slug:
        raise ValidationError({"name": "The name must contain at least one letter or digit."})
    if Project.objects.filter(Q(slug=slug) | Q(name_key=name_key)).exists():
        raise ValidationError({"name": f"A project named {name!r}, or one that differs only in case or form, exists."})
    project = Project.objects.create(name=name, name_key=name_key, slug=slug, description=description, created_by=owner)
    Membership.objects.create(project=project, user=owner, role=ProjectRole.OWNER)
    audit_record(actor=owner, action="project.created", obj=project, project=project, after={"name": name})
    return project


@transaction.atomic
def project_update(
    *,
    project: Project,
    actor: AbstractBaseUser,
    description: str | None = None,
    required_approvals: int | None = None,
    prediction_log_retention_days: int | None = None,
    prediction_rollup_retention_days: int | None = None,
) -> Project:
    """Change a project's settings (owners only). The retention days are applied by apps.telemetry's beat task."""
    require_project_role(actor, project, ProjectRole.OWNER)
    project = Project.objects.select_for_update().get(pk=project.pk)
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description
    if required_approvals is not None:
        changes["required_approvals"] = required_approvals
    retention = {
        "prediction_log_retention_days": prediction_log_retention_days,
        "prediction_rollup_retention_days": prediction_rollup_retention_days,
    }
    for field, days in retention.items():
        if days is None:
            continue
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValidationError({field: "Must be a positive number of days."})
        changes[field] = days
    audited_update(obj=project, actor=actor, action="project.updated", project=project, changes=changes)
    return project


@transaction.atomic
def membership_set(*, project: Project, username: str, role: str, actor: AbstractBaseUser) -> Membership:
    """Add the active user named `username` to the project with `role`, or change their role (owners).

    The role is checked before the name is looked up, so only owners learn which user names exist.
    """
    require_project_role(actor, project, ProjectRole.OWNER)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ValidationError({"username": f"No active user named {username!r}."})
    if role not in ProjectRole.values:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(ProjectRole.values)}."})
    membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
    before = {"role": membership.role} if membership else None
    if membership is None:
        membership = Membership.objects.create(project=project, user=user, role=role)
    else:
        if membership.role == ProjectRole.OWNER and role != ProjectRole.OWNER:
            others = Membership.objects.filter(project=project, role=ProjectRole.OWNER).exclude(pk=membership.pk)
            if not others.exists():
                raise ValidationError({"role": "A project must keep at least one owner."})
        membership.role = role
        membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="membership.set",
        obj=membership,
        project=project,
        before=before,
        after={"user": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: AbstractBaseUser) -> None:
    require_project_role(actor, membership.project, ProjectRole.OWNER)
    if membership.role == ProjectRole.OWNER:
        owners = Membership.objects.filter(project=membership.project, role=ProjectRole.OWNER)
        if owners.count() <= 1:
            raise ValidationError({"role": "A project must keep at least one owner."})
    audit_record(
        actor=actor,
        action="membership.removed",
        obj=membership,
        project=membership.project,
        before={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


@transaction.atomic
def api_token_create(*, user: AbstractBaseUser, name: str) -> tuple[APIToken, str]:
    """Create a token and return it with its key, which is never stored and never shown again."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the token a name, so you can recognise it later."})
    key = APIToken.generate_key()
    token = APIToken.objects.create(user=user, name=name[:100], prefix=key[:12], key_hash=APIToken.hash_key(key))
    audit_record(actor=user, action="api_token.created", obj=token, project=None, after={"name": token.name})
    return token, key


@transaction.atomic
def api_token_revoke(*, token: APIToken, actor: AbstractBaseUser) -> APIToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_token.revoked", obj=token, project=None)
    return token


def artifact_verified_path(
    *, sha256: str, project: Project | None, obj: Any, actor: AbstractBaseUser | None = None
) -> Path:
    """The path of a stored artifact after hash verification; a tampered file is written to the audit log."""
    try:
        return get_artifact_store().verified_path(sha256)
    except ArtifactIntegrityError as exc:
        audit_record(
            actor=actor,
            action="artifact.integrity_failed",
            obj=obj,
            project=project,
            after={"expected_sha256": exc.expected, "actual_sha256": exc.actual},
            message=str(exc),
        )
        raise
