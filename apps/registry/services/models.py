"""Use cases of registered models: create and update."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import audited_update, clean_name
from apps.registry.models import RegisteredModel
from apps.registry.services._common import MODEL_NAME_MISSING, _model_for_update


@transaction.atomic
def registered_model_create(
    *, project: Project, name: str, actor: AbstractBaseUser, description: str = ""
) -> RegisteredModel:
    require_project_role(actor, project, ProjectRole.EDITOR)
    name, key = clean_name(name, missing=MODEL_NAME_MISSING)
    if RegisteredModel.objects.filter(project=project, name_key=key).exists():
        raise ValidationError(
            {"name": f"A model named {name!r}, or one that differs only in case or form, exists in this project."}
        )
    model = _model_for_update(project=project, name=name, actor=actor)
    if description:
        model.description = description.strip()
        model.save(update_fields=["description", "updated_at"])
    return model


@transaction.atomic
def registered_model_update(
    *, model: RegisteredModel, actor: AbstractBaseUser, description: str | None = None, tags: dict | None = None
) -> RegisteredModel:
    require_project_role(actor, model.project, ProjectRole.EDITOR)
    model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description.strip()
    if tags is not None:
        if not isinstance(tags, dict):
            raise ValidationError({"tags": "Tags must be an object of name → value."})
        changes["tags"] = tags
    audited_update(obj=model, actor=actor, action="registered_model.updated", project=model.project, changes=changes)
    return model
