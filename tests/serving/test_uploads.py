"""Uploaded model files: format detection by magic bytes, wrapping into bundles, refusal of pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import pytest
from serving_helpers import SPECIES, make_preprocessor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from test_bundle import MarkerPayload

from serving.bundle import BundleError, bundle_from_upload, detect_format, import_skops
from serving.loader import load_predictor
from serving.signature import validate_input

NUMERIC_SIGNATURE = {
    "inputs": [{"name": f"f{i}", "type": "number", "nullable": False} for i in range(4)],
    "outputs": {"type": "classes", "classes": [0, 1, 2]},
}


@pytest.fixture
def fitted_pipeline(iris: tuple, iris_signature: dict) -> Pipeline:
    frame, labels = iris
    return Pipeline([("preprocess", make_preprocessor()), ("model", LogisticRegression(max_iter=500))]).fit(
        validate_input(frame, iris_signature), labels
    )


def test_detects_each_format(sklearn_model: tuple, xgboost_model: tuple, fitted_pipeline: Pipeline, tmp_path: Path):
    from safetensors.numpy import save_file

    booster = xgboost_model[3]
    import_skops().dump(fitted_pipeline, tmp_path / "m.skops")
    booster.save_model(tmp_path / "m.ubj")
    booster.save_model(tmp_path / "m.json")
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(tmp_path / "m.safetensors"))
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "m0.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=0))
    (tmp_path / "m.cloudpickle").write_bytes(cloudpickle.dumps(fitted_pipeline))
    joblib.dump(fitted_pipeline, tmp_path / "m.joblib")
    joblib.dump(fitted_pipeline, tmp_path / "mz.joblib", compress=3)
    joblib.dump(fitted_pipeline, tmp_path / "mg.joblib", compress=("gzip", 3))
    joblib.dump(fitted_pipeline, tmp_path / "mx.joblib", compress=("xz", 3))
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    expected = {
        sklearn_model[0]: "bundle",
        tmp_path / "m.skops": "skops",
        tmp_path / "m.ubj": "xgboost-ubj",
        tmp_path / "m.json": "xgboost-json",
        tmp_path / "m.safetensors": "safetensors",
        tmp_path / "m.pkl": "pickle",
        tmp_path / "m0.pkl": "pickle",
        tmp_path / "m.cloudpickle": "pickle",
        tmp_path / "m.joblib": "pickle",
        tmp_path / "mz.joblib": "pickle",
        tmp_path / "mg.joblib": "pickle",
        tmp_path / "mx.joblib": "pickle",
        tmp_path / "m.csv": "unknown",
    }
    assert {path.name: detect_format(path) for path in expected} == {path.name: fmt for path, fmt in expected.items()}


@pytest.mark.parametrize("writer", ["pickle", "joblib", "joblib-zlib", "cloudpickle"])
def test_refused_pickle_upload_is_never_unpickled(writer: str, iris_signature: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    upload = tmp_path / "model.bin"
    payload = MarkerPayload(marker)
    if writer == "pickle":
        upload.write_bytes(pickle.dumps(payload))
    elif writer == "cloudpickle":
        upload.write_bytes(cloudpickle.dumps(payload))
    else:
        joblib.dump(payload, upload, compress=3 if writer == "joblib-zlib" else 0)
    assert not marker.exists()
    assert detect_format(upload) == "pickle"
    with pytest.raises(BundleError, match="pickle is refused"):
        bundle_from_upload(upload, fmt="pickle", signature=iris_signature, task="classification", classes=["a"])
    # Claiming another format does not get a pickle past the check either.
    with pytest.raises(BundleError, match="looks like 'pickle'"):
        bundle_from_upload(upload, fmt="skops", signature=iris_signature, task="classification", classes=["a"])
    assert not marker.exists()


def test_trusted_joblib_upload_becomes_a_custom_bundle(
    fitted_pipeline: Pipeline, iris: tuple, iris_signature: dict, tmp_path: Path
) -> None:
    joblib.dump(fitted_pipeline, tmp_path / "m.joblib")
    path = bundle_from_upload(
        tmp_path / "m.joblib", fmt="pickle", signature=iris_signature, task="classification", classes=list(SPECIES),
        trust_pickle=True,
    )  # fmt: skip
    with pytest.raises(BundleError, match="pickle is refused"):
        load_predictor(path)
    predictor = load_predictor(path, trust_pickle=True)
    frame = iris[0]
    assert predictor.flavor == "custom"
    assert (predictor.predict(frame) == fitted_pipeline.predict(validate_input(frame, iris_signature))).all()


def test_skops_upload_becomes_an_sklearn_bundle(
    fitted_pipeline: Pipeline, iris: tuple, iris_signature: dict, tmp_path: Path
) -> None:
    import_skops().dump(fitted_pipeline, tmp_path / "m.skops")
    path = bundle_from_upload(
        tmp_path / "m.skops", fmt="skops", signature=iris_signature, task="classification", classes=None
    )
    predictor = load_predictor(path)
    frame = iris[0]
    assert predictor.flavor == "sklearn" and predictor.classes == list(SPECIES)
    np.testing.assert_allclose(
        predictor.predict_proba(frame), fitted_pipeline.predict_proba(validate_input(frame, iris_signature))
    )


def test_xgboost_upload_takes_signature_columns_in_order(tmp_path: Path) -> None:
    import xgboost as xgb
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(x, label=y), 10)
    booster.save_model(tmp_path / "m.ubj")
    path = bundle_from_upload(
        tmp_path / "m.ubj", fmt="xgboost-ubj", signature=NUMERIC_SIGNATURE, task="classification", classes=[0, 1, 2]
    )
    predictor = load_predictor(path)
    rows = [{f"f{i}": float(v) for i, v in enumerate(row)} for row in x]
    np.testing.assert_allclose(predictor.predict_proba(rows), booster.predict(xgb.DMatrix(x)), rtol=1e-5, atol=1e-6)
    assert (predictor.predict(rows) == booster.predict(xgb.DMatrix(x)).argmax(axis=1)).all()
    narrow = NUMERIC_SIGNATURE | {"inputs": NUMERIC_SIGNATURE["inputs"][:3]}
    with pytest.raises(BundleError, match="takes 4 features, the signature has 3"):
        bundle_from_upload(tmp_path / "m.ubj", fmt="xgboost-ubj", signature=narrow, task="classification", classes=[0])


def test_bare_safetensors_and_unknown_files_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, dtype=np.float32)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(BundleError, match="no architecture"):
        bundle_from_upload(tmp_path / "m.safetensors", fmt="safetensors", signature=NUMERIC_SIGNATURE,
                           task="classification", classes=[0])  # fmt: skip
    (tmp_path / "x.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(BundleError, match="unknown model file format"):
        bundle_from_upload(tmp_path / "x.bin", fmt="unknown", signature=NUMERIC_SIGNATURE, task="regression",
                           classes=None)  # fmt: skip
