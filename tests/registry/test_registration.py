"""Registration: numbering, names, formats, refused pickles and signature mismatches (nothing stored on error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from apps.core.artifacts import get_artifact_store
from apps.core.models import AuditEntry
from apps.registry import services
from apps.registry.choices import ModelVersionStage, RegistryEventType
from apps.registry.models import ModelVersion, RegisteredModel, RegistryEvent
from tests.conftest import client_for
from tests.registry.registry_helpers import FEATURES, SPECIES, iris_signature, malicious_pickle

pytestmark = pytest.mark.django_db

URL = "/api/v1/model-versions/"


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


def upload(client, project, path: Path, **fields: object):
    data = {"project": project.slug, "model_name": "iris", **fields}
    for key in ("signature", "input_example", "validation_results", "tags"):
        if key in data and not isinstance(data[key], str):
            data[key] = json.dumps(data[key])
    with open(path, "rb") as handle:
        return client.post(URL, {**data, "file": handle}, format="multipart")


def test_versions_are_numbered_and_the_model_is_created_once(register, project) -> None:
    v1 = register("Iris Classifier")
    v2 = register("iris classifier", bundle="bundle_v2")  # same name under case folding
    v3 = register("ＩＲＩＳ Classifier")  # and under Unicode NFKC
    assert [v.number for v in (v1, v2, v3)] == [1, 2, 3]
    assert RegisteredModel.objects.filter(project=project).count() == 1
    assert v1.model.name == "Iris Classifier"
    assert v1.stage == ModelVersionStage.NONE
    assert v1.flavor == "sklearn" and v1.task == "classification"
    assert v1.signature["outputs"]["classes"] == SPECIES
    assert v1.input_example and set(v1.input_example[0]) == set(FEATURES)
    assert v1.params["n_estimators"] == 5
    assert get_artifact_store().exists(v1.sha256)
    assert AuditEntry.objects.filter(action="model_version.registered").count() == 3
    assert RegistryEvent.objects.filter(type=RegistryEventType.VERSION_REGISTERED).count() == 3


def test_validation_is_recomputed_from_metrics_and_thresholds(register) -> None:
    version = register(
        validation={"metrics": {"accuracy": 0.7}, "thresholds": {"accuracy": ">=0.8"}, "passed": True},
        label="v1.0.0",
    )
    assert version.validation_passed is False  # the claimed "passed" is not trusted
    assert version.validation["failures"] == ["accuracy 0.7 < 0.8"]
    assert version.metrics == {"accuracy": 0.7}
    assert version.label == "v1.0.0"
    with pytest.raises(ValidationError) as error:
        register(label="v1.0.0")
    assert "label" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        register(label="one")
    assert "label" in error.value.message_dict
    assert ModelVersion.objects.count() == 1


def test_upload_bundle_through_the_api(project, member, model_file) -> None:
    response = upload(client_for(member), project, model_file("bundle"), label="v2.1.0", description="**bold**")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["label"] == "v2.1.0" and body["source"] == "upload"
    assert body["flavor"] == "sklearn" and body["model_name"] == "iris"


@pytest.mark.parametrize("name", ["skops", "xgboost_ubj", "xgboost_json"])
def test_upload_bare_model_files_with_a_signature(name: str, project, member, model_file) -> None:
    example = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]
    response = upload(client_for(member), project, model_file(name), signature=iris_signature(), input_example=example)
    assert response.status_code == 201, response.content
    version = ModelVersion.objects.get(pk=response.json()["id"])
    assert version.flavor == ("sklearn" if name == "skops" else "xgboost")
    predictor = services.model_version_load(version=version)
    assert predictor.predict(example)[0] == "setosa"


def _assert_nothing_stored(artifact_root: Path) -> None:
    assert ModelVersion.objects.count() == 0
    assert RegisteredModel.objects.count() == 0
    assert stored_files(artifact_root) == []
    assert list((artifact_root / "tmp").iterdir()) == []


def test_a_model_name_too_long_once_case_folded_is_refused(project, member, model_file, artifact_root) -> None:
    response = upload(client_for(member), project, model_file("bundle"), model_name="ß" * 100)
    assert response.status_code == 400, response.content
    assert "limit is 100" in response.json()["model_name"][0]
    _assert_nothing_stored(artifact_root)


def test_pickle_upload_is_refused_and_never_unpickled(project, member, tmp_path, artifact_root) -> None:
    marker = tmp_path / "pwned"
    path = malicious_pickle(tmp_path / "model.pkl", marker)
    response = upload(client_for(member), project, path, signature=iris_signature())
    assert response.status_code == 400
    assert "pickle" in response.json()["file"][0].lower()
    assert not marker.exists()
    _assert_nothing_stored(artifact_root)


def test_joblib_compressed_pickle_is_refused_too(project, member, tmp_path, artifact_root) -> None:
    import joblib

    path = tmp_path / "model.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path, compress=3)
    response = upload(client_for(member), project, path, signature=iris_signature())
    assert response.status_code == 400 and "file" in response.json()
    _assert_nothing_stored(artifact_root)


@override_settings(REGISTRY_TRUST_PICKLE=True)
def test_trusted_pickles_are_accepted_when_the_setting_allows(project, member, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    from tests.registry.registry_helpers import iris_frame

    frame, labels = iris_frame()
    path = tmp_path / "model.pkl"
    import pickle

    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=300).fit(frame, labels)))
    response = upload(client_for(member), project, path, signature=iris_signature())
    assert response.status_code == 201, response.content
    assert response.json()["flavor"] == "custom"


def test_unsupported_format_is_refused(project, member, tmp_path, artifact_root) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04onnx-ish bytes")
    response = upload(client_for(member), project, path, signature=iris_signature())
    assert response.status_code == 400
    assert "Unsupported model file" in response.json()["file"][0]
    _assert_nothing_stored(artifact_root)


def test_xgboost_feature_count_mismatch_names_the_signature(project, member, model_file, artifact_root) -> None:
    signature = iris_signature()
    signature["inputs"] = signature["inputs"][:3]
    response = upload(client_for(member), project, model_file("xgboost_ubj"), signature=signature)
    assert response.status_code == 400
    assert "takes 4 features, the signature has 3" in response.json()["signature"][0]
    _assert_nothing_stored(artifact_root)


def test_skops_model_that_does_not_fit_the_signature_is_refused(project, member, model_file, artifact_root) -> None:
    signature = iris_signature()
    signature["inputs"] = signature["inputs"][:2]
    response = upload(client_for(member), project, model_file("skops"), signature=signature)
    assert response.status_code == 400
    assert "signature" in response.json()
    _assert_nothing_stored(artifact_root)


def test_bundle_whose_manifest_signature_differs_is_refused(project, member, model_file, artifact_root) -> None:
    signature = iris_signature()
    signature["inputs"][0]["type"] = "integer"
    response = upload(client_for(member), project, model_file("bundle"), signature=signature)
    assert response.status_code == 400
    assert "differs from the one in the bundle" in response.json()["signature"][0]
    _assert_nothing_stored(artifact_root)


def test_bare_model_without_signature_is_refused(project, member, model_file, artifact_root) -> None:
    response = upload(client_for(member), project, model_file("skops"))
    assert response.status_code == 400 and "signature" in response.json()
    response = upload(client_for(member), project, model_file("skops"), signature='{"inputs": "no"}')
    assert response.status_code == 400 and "signature" in response.json()
    _assert_nothing_stored(artifact_root)


def test_viewer_cannot_upload_and_nothing_is_stored(project, viewer, model_file, artifact_root) -> None:
    response = upload(client_for(viewer), project, model_file("bundle"))
    assert response.status_code == 403
    _assert_nothing_stored(artifact_root)


def test_outsider_cannot_name_the_project(project, outsider, model_file, artifact_root) -> None:
    response = upload(client_for(outsider), project, model_file("bundle"))
    assert response.status_code == 400 and "project" in response.json()
    _assert_nothing_stored(artifact_root)


def test_a_failed_registration_keeps_files_other_versions_use(register, artifact_root) -> None:
    first = register(label="v1.0.0")
    with pytest.raises(ValidationError):
        register(label="v1.0.0")  # same bytes, refused label
    assert get_artifact_store().exists(first.sha256)
