"""Fixtures of the registry tests: model files (built once per session) and registered versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from apps.registry import services
from tests.registry.registry_helpers import sklearn_bundle, skops_file, xgboost_file


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-files")
    return {
        "bundle": sklearn_bundle(root / "rf5.zip", n_estimators=5),
        "bundle_v2": sklearn_bundle(root / "rf9.zip", n_estimators=9, seed=1),
        "bundle_3_features": sklearn_bundle(root / "rf3.zip", features=["sepal_length", "sepal_width", "petal_length"]),
        "skops": skops_file(root / "logreg.skops"),
        "xgboost_ubj": xgboost_file(root / "booster", fmt="ubj"),
        "xgboost_json": xgboost_file(root / "booster", fmt="json"),
    }


@pytest.fixture
def model_file(model_files: dict[str, Path], tmp_path: Path):
    """A private copy of a model file (uploads are moved or deleted by the code under test)."""

    def copy(name: str) -> Path:
        source = model_files[name]
        target = tmp_path / "upload" / source.name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        return target

    return copy


@pytest.fixture
def register(project: object, member: object, model_files: dict[str, Path]):
    """Register a bundle as the next version of a model (as the editor `member`)."""

    def _register(name: str = "iris-classifier", bundle: str = "bundle", **kwargs: object):
        kwargs.setdefault("actor", member)
        return services.model_version_register(
            project=project, model_name=name, bundle_path=model_files[bundle], **kwargs
        )

    return _register


@pytest.fixture
def two_versions(register):
    """iris-classifier v1 (accuracy 0.9) and v2 (accuracy 0.95), both with passing thresholds."""
    thresholds = {"accuracy": ">=0.8"}
    v1 = register(validation={"metrics": {"accuracy": 0.9, "log_loss": 0.3}, "thresholds": thresholds})
    v2 = register(
        bundle="bundle_v2", validation={"metrics": {"accuracy": 0.95, "log_loss": 0.2}, "thresholds": thresholds}
    )
    return v1, v2
