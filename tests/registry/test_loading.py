"""The one loader: hash-verified loads, tampered artifacts (audited, shown, refused), export and the Python API."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from apps.core.artifacts import get_artifact_store
from apps.core.models import AuditEntry
from apps.registry import services
from apps.registry.client import ModelRegistry
from apps.registry.models import ModelVersion
from tests.conftest import client_for
from tests.registry.registry_helpers import SPECIES

pytestmark = pytest.mark.django_db


def tamper(version: ModelVersion) -> None:
    path = get_artifact_store()._path(version.sha256)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(-10, os.SEEK_END)
        handle.write(b"0123456789")


def test_load_verifies_and_predicts(register) -> None:
    version = register()
    predictor = services.model_version_load(version=version)
    assert predictor.sha256 == version.sha256
    assert set(predictor.predict(version.input_example)) <= set(SPECIES)
    result = services.model_version_load_test(version=version, actor=None)
    assert len(result["predictions"]) == len(version.input_example)


def test_a_tampered_artifact_is_refused_audited_and_shown(register, member, client) -> None:
    version = register()
    tamper(version)
    with pytest.raises(services.ModelLoadError) as error:
        services.model_version_load(version=version, actor=member)
    assert error.value.integrity
    version.refresh_from_db()
    assert "failed hash verification" in version.integrity_error
    entry = AuditEntry.objects.get(action="artifact.integrity_failed")
    assert entry.object_id == str(version.pk) and entry.actor == member

    client.force_login(member)
    page = client.get(version.get_absolute_url())
    assert b'data-testid="integrity-banner"' in page.content
    load_test = client.post(f"{version.get_absolute_url()}load-test/")
    assert load_test.status_code == 409
    assert b'data-testid="load-error"' in load_test.content and b"Integrity error" in load_test.content
    download = client_for(member).get(f"/api/v1/model-versions/{version.pk}/download/")
    assert download.status_code == 409


def test_a_good_load_clears_the_integrity_mark(register) -> None:
    version = register()
    ModelVersion.objects.filter(pk=version.pk).update(integrity_error="stale")
    version.refresh_from_db()
    services.model_version_load(version=version)
    version.refresh_from_db()
    assert version.integrity_error == ""


def test_load_test_page_shows_predictions(register, viewer, client) -> None:
    version = register()
    client.force_login(viewer)
    response = client.post(f"{version.get_absolute_url()}load-test/")
    assert response.status_code == 200
    assert b'data-testid="load-result"' in response.content


def test_export_bundle_holds_the_artifact_signature_and_metadata(register, member) -> None:
    version = register(label="v1.0.0", validation={"metrics": {"accuracy": 0.9}})
    response = client_for(member).get(f"/api/v1/model-versions/{version.pk}/download/")
    assert response["Content-Disposition"].startswith('attachment; filename="iris-classifier-v1.zip"')
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    bundle = archive.read("model.zip")
    import hashlib

    assert hashlib.sha256(bundle).hexdigest() == version.sha256
    assert json.loads(archive.read("signature.json")) == version.signature
    metadata = json.loads(archive.read("metadata.json"))
    assert metadata["label"] == "v1.0.0" and metadata["metrics"] == {"accuracy": 0.9}
    assert AuditEntry.objects.filter(action="model_version.exported").exists()


def test_python_client_registers_and_loads(project, member, model_files: dict[str, Path], approver) -> None:
    registry = ModelRegistry(project=project.slug, actor="member")
    version = registry.register_model(
        model_files["bundle"],
        {"metrics": {"accuracy": 0.93}, "thresholds": {"accuracy": ">=0.9"}},
        {"experiment_id": "iris-exp", "label": "v0.1.0", "tags": {"team": "ml"}},
    )
    assert (version.model.name, version.number, version.validation_passed) == ("iris-exp", 1, True)
    model, metadata = registry.get_model("iris-exp:1")
    assert model.sha256 == version.sha256 and metadata["tags"] == {"team": "ml"}
    assert registry.get_model("iris-exp:v0.1.0")[1]["version"] == 1
    assert registry.get_model(1, model_name="iris-exp")[1]["version"] == 1
    promotion = services.promotion_request_create(version=version, actor=member, target_alias="champion")
    services.promotion_request_approve(request=promotion, actor=approver)
    assert registry.get_model("iris-exp@champion")[1]["aliases"] == ["champion"]
    with pytest.raises(ModelVersion.DoesNotExist):
        registry.get_model("iris-exp:production")
