"""Shared by the registry's use cases: the exceptions, model names and the locked model row."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from apps.core.exceptions import Conflict
from apps.core.models import Project
from apps.core.services import audit_record, clean_name
from apps.registry.models import RegisteredModel

MODEL_NAME_MISSING = "A registered model needs a name."


class ModelLoadError(Conflict):
    """A version could not be loaded; `integrity` tells whether its artifact failed verification.

    A conflict (the API answers 409) that the version page tells apart: it shows a tampered artifact as 409 and
    a bundle that does not load or predict as 422.
    """

    def __init__(self, message: str, *, integrity: bool = False) -> None:
        super().__init__(message)
        self.integrity = integrity


def _model_for_update(*, project: Project, name: str, actor: AbstractBaseUser | None) -> RegisteredModel:
    """The named model, locked; created when it does not exist yet. Must run inside a transaction."""
    name, key = clean_name(name, field="model_name", missing=MODEL_NAME_MISSING)
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
