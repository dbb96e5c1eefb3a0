from __future__ import annotations

import pytest
from django.core.management import call_command

from apps.core.models import Project
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import ModelVersion, PromotionRequest

pytestmark = pytest.mark.django_db


def test_demo_registry_is_idempotent(monkeypatch) -> None:
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo")
    call_command("load_demo_registry")
    call_command("load_demo_registry")
    project = Project.objects.get(slug="demo")
    versions = ModelVersion.objects.filter(model__project=project).order_by("number")
    assert [(v.number, v.label, v.stage) for v in versions] == [
        (1, "v1.0.0", ModelVersionStage.PRODUCTION),
        (2, "v1.1.0", ModelVersionStage.NONE),
    ]
    pending = PromotionRequest.objects.get(status=PromotionRequestStatus.OPEN)
    assert pending.version == versions[1] and pending.requested_by.username == "alice"
    assert all(v.validation_passed for v in versions)
