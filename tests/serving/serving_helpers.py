"""Shared pieces of the serving tests (a uniquely named module: `conftest` is ambiguous across test folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ROOT = Path(__file__).resolve().parents[2]
SPECIES = np.array(["setosa", "versicolor", "virginica"])


def make_preprocessor() -> ColumnTransformer:
    numeric = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    categorical = Pipeline(
        [("impute", SimpleImputer(strategy="most_frequent")), ("encode", OneHotEncoder(handle_unknown="ignore"))]
    )
    return ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric),
            ("categorical", categorical, ["size"]),
        ],
        sparse_threshold=0.0,
    )
