"""Bundles: round trips per flavor, integrity checks, trusted types, and refusal of pickles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_helpers import ROOT, SPECIES, make_preprocessor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from serving.bundle import BundleError, read_manifest, save_bundle
from serving.loader import load_predictor
from serving.signature import InputError, validate_input


def test_manifest_describes_the_bundle(sklearn_model: tuple, iris_signature: dict) -> None:
    path, _, _ = sklearn_model
    manifest = read_manifest(path)
    assert manifest["flavor"] == "sklearn" and manifest["task"] == "classification"
    assert manifest["signature"] == iris_signature
    assert manifest["classes"] == list(SPECIES)
    assert len(manifest["input_example"]) == 5 and set(manifest["input_example"][0]) == set(
        spec["name"] for spec in iris_signature["inputs"]
    )
    assert manifest["framework_versions"]["scikit-learn"]
    assert manifest["created_at"].endswith("+00:00")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["MLmodel.json", "model.skops"]
    assert set(manifest["files"]) == {"model.skops"} and len(manifest["files"]["model.skops"]) == 64


def test_sklearn_round_trip_predicts_identically(sklearn_model: tuple, iris: tuple, iris_signature: dict) -> None:
    path, sha, pipeline = sklearn_model
    frame, _ = iris
    predictor = load_predictor(path, expected_sha256=sha)
    assert (predictor.flavor, predictor.task, predictor.sha256) == ("sklearn", "classification", sha)
    expected = pipeline.predict(validate_input(frame, iris_signature))
    assert (predictor.predict(frame) == expected).all()
    np.testing.assert_allclose(
        predictor.predict_proba(frame), pipeline.predict_proba(validate_input(frame, iris_signature))
    )
    # Labels come back as the original strings, also for row dicts.
    assert predictor.predict(frame.head(2).to_dict("records")).tolist() == list(expected[:2])


def test_xgboost_round_trip_predicts_identically(xgboost_model: tuple, iris: tuple, iris_signature: dict) -> None:
    import xgboost as xgb

    path, sha, preprocessor, booster = xgboost_model
    frame, _ = iris
    predictor = load_predictor(path, expected_sha256=sha)
    raw = booster.predict(xgb.DMatrix(preprocessor.transform(validate_input(frame, iris_signature))))
    np.testing.assert_allclose(predictor.predict_proba(frame), raw, rtol=1e-5, atol=1e-6)
    assert (predictor.predict(frame) == SPECIES[raw.argmax(axis=1)]).all()


def test_pytorch_round_trip_predicts_identically(iris: tuple, iris_signature: dict, tmp_path: Path) -> None:
    import torch

    from serving.mlp import TabularMLP, architecture

    frame, labels = iris
    x = validate_input(frame, iris_signature)
    preprocessor = make_preprocessor().fit(x)
    features = torch.from_numpy(preprocessor.transform(x).astype(np.float32))
    torch.manual_seed(0)
    model = TabularMLP(features.shape[1], [8], 3, 0.0).eval()
    arch = architecture(input_dim=features.shape[1], hidden=[8], output_dim=3, dropout=0.0, target_mean=0, target_std=1)
    sha = save_bundle(
        tmp_path / "m.zip",
        flavor="pytorch",
        task="classification",
        signature=iris_signature,
        input_example=frame,
        classes=list(SPECIES),
        params={},
        preprocessor=preprocessor,
        torch_model=model,
        torch_arch=arch,
    )
    predictor = load_predictor(tmp_path / "m.zip", expected_sha256=sha)
    with torch.no_grad():
        expected = torch.softmax(model(features), dim=1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(frame), expected, rtol=1e-5, atol=1e-6)
    assert (predictor.predict(frame) == SPECIES[expected.argmax(axis=1)]).all()


def test_regression_predictor_refuses_predict_proba(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    signature = {"inputs": [{"name": "x", "type": "number", "nullable": False}], "outputs": {"type": "value"}}
    pipeline = Pipeline([("model", LinearRegression())]).fit(frame, [1.0, 3.0, 5.0, 7.0])
    save_bundle(
        tmp_path / "r.zip", flavor="sklearn", task="regression", signature=signature, input_example=frame,
        classes=None, params={}, pipeline=pipeline,
    )  # fmt: skip
    predictor = load_predictor(tmp_path / "r.zip")
    np.testing.assert_allclose(predictor.predict([{"x": 10}]), [21.0])
    with pytest.raises(ValueError, match="only defined for classification"):
        predictor.predict_proba([{"x": 10}])


def test_predict_validates_input_first(sklearn_model: tuple, iris: tuple) -> None:
    predictor = load_predictor(sklearn_model[0])
    rows = iris[0].head(2).to_dict("records")
    rows[1]["petal_width"] = "wide"
    with pytest.raises(InputError) as caught:
        predictor.predict(rows)
    assert caught.value.field == "petal_width" and "row 1" in str(caught.value)


def test_unknown_category_does_not_crash(sklearn_model: tuple, iris: tuple) -> None:
    predictor = load_predictor(sklearn_model[0])
    row = iris[0].head(1).to_dict("records")[0] | {"size": "enormous"}
    assert predictor.predict([row])[0] in SPECIES


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_bundle_is_refused(sklearn_model: tuple, tmp_path: Path) -> None:
    path, sha, _ = sklearn_model
    copy = tmp_path / "copy.zip"
    copy.write_bytes(path.read_bytes())
    _flip_byte(copy, copy.stat().st_size // 2)
    with pytest.raises(BundleError) as caught:
        load_predictor(copy, expected_sha256=sha)
    assert sha in str(caught.value) and "hash mismatch" in str(caught.value)
    # Without the expected hash, the member's own checks still refuse it.
    with pytest.raises(BundleError):
        load_predictor(copy)


def _rewrite(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, replace.get(name, src.read(name)))


def test_member_hash_mismatch_is_refused(xgboost_model: tuple, tmp_path: Path) -> None:
    path = xgboost_model[0]
    with zipfile.ZipFile(path) as archive:
        model = bytearray(archive.read("model.ubj"))
    model[-10] ^= 0x01
    _rewrite(path, tmp_path / "bad.zip", {"model.ubj": bytes(model)})
    with pytest.raises(BundleError, match="model.ubj hash mismatch"):
        load_predictor(tmp_path / "bad.zip")


def test_missing_member_and_unlisted_member_are_refused(sklearn_model: tuple, tmp_path: Path) -> None:
    path = sklearn_model[0]
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "missing.zip", "w") as dst:
        dst.writestr("MLmodel.json", src.read("MLmodel.json"))
    with pytest.raises(BundleError, match="model.skops is missing"):
        load_predictor(tmp_path / "missing.zip")
    _rewrite(path, tmp_path / "extra.zip", {})
    with zipfile.ZipFile(tmp_path / "extra.zip", "a") as archive:
        archive.writestr("payload.py", b"print('hi')")
    with pytest.raises(BundleError, match="not listed"):
        load_predictor(tmp_path / "extra.zip")


def test_not_a_zip_and_bad_manifest_are_refused(sklearn_model: tuple, tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"hello")
    with pytest.raises(BundleError, match="not a zip"):
        load_predictor(tmp_path / "x.zip")
    manifest = read_manifest(sklearn_model[0]) | {"flavor": "onnx"}
    _rewrite(sklearn_model[0], tmp_path / "f.zip", {"MLmodel.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="unknown flavor 'onnx'"):
        read_manifest(tmp_path / "f.zip")


def test_skops_with_an_untrusted_type_is_refused(iris: tuple, iris_signature: dict, tmp_path: Path) -> None:
    frame, labels = iris
    from sklearn.tree import DecisionTreeClassifier

    x = validate_input(frame, iris_signature)
    pipeline = Pipeline(
        [
            ("preprocess", make_preprocessor()),
            ("sneaky", FunctionTransformer(func=os.system)),
            ("model", DecisionTreeClassifier()),
        ]
    )
    pipeline.steps[1] = ("sneaky", FunctionTransformer(func=os.system))  # never fitted: it would run commands
    pipeline = Pipeline([pipeline.steps[0], pipeline.steps[2]]).fit(x, labels)
    pipeline.steps.insert(1, ("sneaky", FunctionTransformer(func=os.system)))
    save_bundle(
        tmp_path / "s.zip", flavor="sklearn", task="classification", signature=iris_signature, input_example=None,
        classes=list(SPECIES), params={}, pipeline=pipeline,
    )  # fmt: skip
    with pytest.raises(BundleError, match=r"untrusted type\(s\): posix.system"):
        load_predictor(tmp_path / "s.zip")


class MarkerPayload:
    """Unpickling this creates a marker file: proof that a refused pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_custom_bundle_pickle_is_never_unpickled_unless_trusted(iris_signature: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_bundle(
        tmp_path / "c.zip", flavor="custom", task="classification", signature=iris_signature, input_example=None,
        classes=list(SPECIES), params={}, custom_model=MarkerPayload(marker),
    )  # fmt: skip
    assert not marker.exists()
    with pytest.raises(BundleError, match="pickle is refused"):
        load_predictor(tmp_path / "c.zip")
    assert not marker.exists()
    # The payload is live: trusting it does run it, which is what the refusal above prevented.
    load_predictor(tmp_path / "c.zip", trust_pickle=True)
    assert marker.exists()


def test_save_bundle_checks_its_arguments(iris_signature: dict, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unknown flavor"):
        save_bundle(tmp_path / "a.zip", flavor="onnx", task="classification", signature=iris_signature,
                    input_example=None, classes=["a"], params={})  # fmt: skip
    with pytest.raises(BundleError, match="needs `pipeline`"):
        save_bundle(tmp_path / "a.zip", flavor="sklearn", task="classification", signature=iris_signature,
                    input_example=None, classes=["a"], params={})  # fmt: skip
    with pytest.raises(BundleError, match="needs its classes"):
        save_bundle(tmp_path / "a.zip", flavor="sklearn", task="classification", signature=iris_signature,
                    input_example=None, classes=None, params={}, pipeline=object())  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_serving_an_sklearn_model_never_imports_torch_or_xgboost(sklearn_model: tuple) -> None:
    code = (
        "import sys; from serving.loader import load_predictor; "
        f"p = load_predictor({str(sklearn_model[0])!r}); "
        "p.predict(p.manifest['input_example']); "
        "print(sorted(m for m in ('torch', 'xgboost') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
