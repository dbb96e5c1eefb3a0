"""Model files for the registry tests: tiny iris models as bundles, skops files and XGBoost models."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from serving.bundle import import_skops, save_bundle
from serving.signature import infer_signature

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]


def iris_frame() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = FEATURES
    return frame, np.asarray(SPECIES)[data.target.to_numpy()]


def iris_signature() -> dict:
    frame, _ = iris_frame()
    return infer_signature(frame, target_kind="classification", classes=SPECIES)


def sklearn_bundle(path: Path, *, n_estimators: int = 5, features: list[str] | None = None, seed: int = 0) -> Path:
    """A random forest on iris (optionally on fewer features), saved as our bundle zip."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    frame, labels = iris_frame()
    columns = features or FEATURES
    frame = frame[columns]
    pipeline = Pipeline([("model", RandomForestClassifier(n_estimators=n_estimators, random_state=seed))])
    pipeline.fit(frame, labels)
    save_bundle(
        path,
        flavor="sklearn",
        task="classification",
        signature=infer_signature(frame, target_kind="classification", classes=SPECIES),
        input_example=frame.head(3),
        classes=SPECIES,
        params={"algorithm": "random_forest", "n_estimators": n_estimators},
        pipeline=pipeline,
    )
    return path


def skops_file(path: Path) -> Path:
    """A bare scikit-learn pipeline saved with skops (no signature inside)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    frame, labels = iris_frame()
    pipeline = Pipeline([("model", LogisticRegression(max_iter=300))]).fit(frame, labels)
    path.write_bytes(import_skops().dumps(pipeline))
    return path


def xgboost_file(path: Path, *, fmt: str = "ubj") -> Path:
    """A bare XGBoost booster on the 4 iris features, saved as UBJSON or JSON."""
    import xgboost as xgb

    frame, labels = iris_frame()
    codes = np.searchsorted(SPECIES, labels)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1},
        xgb.DMatrix(frame.to_numpy(), label=codes),
        num_boost_round=3,
    )
    booster.save_model(str(path.with_suffix("." + fmt)))
    return path.with_suffix("." + fmt)


class MarkerPayload:
    """Unpickling this creates a file: the proof that a pickle was opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def malicious_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(MarkerPayload(marker)))
    return path


def make_dataset_version(*, project: Any, blocking_failed: bool = False, status: str = "ready") -> Any:
    """A dataset version row (no file): enough for lineage and the dataset gate check."""
    from apps.core.services import normalize_name
    from apps.datasets.models import Dataset, DatasetVersion

    dataset, _ = Dataset.objects.get_or_create(
        project=project, name_key=normalize_name("iris"), defaults={"name": "iris"}
    )
    number = dataset.versions.count() + 1
    return DatasetVersion.objects.create(
        dataset=dataset,
        number=number,
        sha256=f"{number:064x}",
        format="csv",
        file_name="iris.csv",
        size_bytes=100,
        row_count=150,
        column_count=5,
        blocking_failed=blocking_failed,
        status=status,
    )
