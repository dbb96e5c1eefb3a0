"""Fixtures for the serving tests: small fitted models of each flavor, saved as bundles.

These tests need neither Django nor a database. The repository root goes on sys.path because the test
folders are not packages here (a `tests/serving` package would shadow the real `serving`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving_helpers import SPECIES, make_preprocessor  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from serving.bundle import save_bundle  # noqa: E402
from serving.signature import infer_signature, validate_input  # noqa: E402


@pytest.fixture(scope="session")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    """Iris features plus a categorical column, with string labels."""
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame["size"] = np.where(frame["sepal_length"] > 5.8, "big", "small")
    return frame, SPECIES[data.target.to_numpy()]


@pytest.fixture(scope="session")
def iris_signature(iris: tuple[pd.DataFrame, np.ndarray]) -> dict:
    frame, labels = iris
    return infer_signature(frame, target_kind="classification", classes=sorted(set(labels)))


@pytest.fixture(scope="session")
def sklearn_model(
    iris: tuple[pd.DataFrame, np.ndarray], iris_signature: dict, tmp_path_factory: pytest.TempPathFactory
):
    """(bundle path, sha256, fitted pipeline)."""
    from sklearn.ensemble import RandomForestClassifier

    frame, labels = iris
    x = validate_input(frame, iris_signature)
    pipeline = Pipeline([("preprocess", make_preprocessor()), ("model", RandomForestClassifier(20, random_state=0))])
    pipeline.fit(x, labels)
    path = tmp_path_factory.mktemp("sk") / "model.zip"
    sha = save_bundle(
        path,
        flavor="sklearn",
        task="classification",
        signature=iris_signature,
        input_example=frame,
        classes=list(pipeline.classes_),
        params={"n_estimators": 20},
        pipeline=pipeline,
    )
    return path, sha, pipeline


@pytest.fixture(scope="session")
def xgboost_model(
    iris: tuple[pd.DataFrame, np.ndarray], iris_signature: dict, tmp_path_factory: pytest.TempPathFactory
):
    """(bundle path, sha256, preprocessor, booster)."""
    import xgboost as xgb

    frame, labels = iris
    x = validate_input(frame, iris_signature)
    preprocessor = make_preprocessor().fit(x)
    y = np.searchsorted(SPECIES, labels)
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(preprocessor.transform(x), label=y), num_boost_round=20)
    path = tmp_path_factory.mktemp("xgb") / "model.zip"
    sha = save_bundle(
        path,
        flavor="xgboost",
        task="classification",
        signature=iris_signature,
        input_example=frame,
        classes=list(SPECIES),
        params=params,
        preprocessor=preprocessor,
        booster=booster,
    )
    return path, sha, preprocessor, booster
