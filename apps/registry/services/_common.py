"""Shared by the registry's use cases: the exceptions, model names and the locked model row."""

from __future__ import annotations

import unicodedata

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.core.exceptions import Conflict
from apps.core.models import Project
from apps.core.services import audit_record, normalize_name
from apps.registry.models import RegisteredModel

NAME_MAX_LENGTH = 100


class ModelLoadError(Conflict):
    """A version could not be loaded; `integrity` tells whether its artifact failed verification.

    A conflict (the API answers 409) that the version page tells apart: it shows a tampered artifact as 409 and
    a bundle that does not load or predict as 422.
    """

    def __init__(self, message: str, *, integrity: bool = False) -> None:
        super().__init__(message)
        self.integrity = integrity


def _clean_name(name: str) -> str:
    name = unicodedata.normalize("NFKC", name or "").strip()
    if not name:
        raise ValidationError({"model_name": "A registered model needs a name."})
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError({"model_name": f"The name is {len(name)} characters long; the limit is 100."})
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValidationError({"model_name": "The name contains control characters."})
    return name


def _model_for_update(*, project: Project, name: str, actor: AbstractBaseUser | None) -> RegisteredModel:
    """The named model, locked; created when it does not exist yet. Must run inside a transaction."""
    name = _clean_name(name)
    key = normalize_name(name)
    model = RegisteredModel.objects.select_for_update().filter(project=project, name_key=key).first()
    if model is not None:
        return model
    try:
        # A savepoint: losing a creation race leaves the outer transaction usable, and the winner's row is locked.
        with transaction.atomic():
            model = RegisteredModel.objects.create(project=project, name=name, name_key=key, created_by=actor)
    except IntegrityError:
        return RegisteredModel.objects.select_for_update().get(project=project, name_key=key)
    audit_record(actor=actor, action="registered_model.created", obj=model, project=project, after={"name": name})
    return model
