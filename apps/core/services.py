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
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from apps.core.artifacts import ArtifactIntegrityError, get_artifact_store
from apps.core.choices import ProjectRole
from apps.core.middleware import current_ip
from apps.core.models import APIToken, AuditEntry, Membership, Project
from apps.core.permissions import require_project_role


def normalize_name(value: str) -> str:
    """The form in which two names are compared: URL-decoded, Unicode NFKC, case-folded, trimmed.

    Names that differ only in these ways would look the same to a person, so they must not coexist.
    """
    return unicodedata.normalize("NFKC", unquote(value)).casefold().strip()


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
    actor = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEntry.objects.create(
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


@transaction.atomic
def project_create(*, name: str, description: str = "", owner: AbstractBaseUser) -> Project:
    name = unicodedata.normalize("NFKC", name).strip()
    if not name:
        raise ValidationError({"name": "A project needs a name."})
    slug = slugify(name)[:100]
    if not slug:
        raise ValidationError({"name": "The name must contain at least one letter or digit."})
    name_key = normalize_name(name)
    if Project.objects.filter(Q(slug=slug) | Q(name_key=name_key)).exists():
        raise ValidationError({"name": f"A project named {name!r}, or one that differs only in case or form, exists."})
    project = Project.objects.create(name=name, name_key=name_key, slug=slug, description=description, created_by=owner)
    Membership.objects.create(project=project, user=owner, role=ProjectRole.OWNER)
    audit_record(actor=owner, action="project.created", obj=project, project=project, after={"name": name})
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
