"""The compiled numpy preprocessor must equal sklearn's transform, including missing values and unseen categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler

from serving.fastpath import compile_transform
from serving.signature import coerce_columns, infer_signature
from serving.transforms import Log1pTransformer


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 100, size=n).astype(float),
            "c": rng.choice(["x", "y", "z"], size=n).astype(object),
            "d": rng.integers(0, 3, size=n),
        }
    )
    frame.loc[::7, "a"] = np.nan
    frame.loc[::5, "c"] = None
    return frame


@pytest.mark.parametrize("scaler", [StandardScaler(), MinMaxScaler(clip=True), RobustScaler(), "passthrough"])
@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_compiled_transform_equals_sklearn(scaler: object, strategy: str) -> None:
    train, serve = _frame(200, 0), _frame(50, 1)
    serve.loc[3, "c"] = "never seen"
    preprocessor = ColumnTransformer(
        [
            ("num", Pipeline([("impute", SimpleImputer(strategy=strategy, fill_value=0.0)), ("scale", scaler)]), ["a"]),
            ("log", Pipeline([("impute", SimpleImputer()), ("log", Log1pTransformer())]), ["b"]),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("encode", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["c", "d"],
            ),
        ],
        sparse_threshold=0.0,
    )
    signature = infer_signature(train, target_kind="regression", classes=None)
    columns = coerce_columns(train, signature)
    preprocessor.fit(pd.DataFrame(columns))
    compiled = compile_transform(preprocessor, list(train.columns))
    assert compiled is not None
    serve_columns = coerce_columns(serve, signature)
    expected = preprocessor.transform(pd.DataFrame(serve_columns))
    np.testing.assert_allclose(compiled(serve_columns), expected, rtol=1e-12, atol=1e-12)
    assert compiled(serve_columns)[3, -6:-3].sum() == 0  # the unseen category encodes as zeros


def test_unsupported_steps_fall_back_to_sklearn() -> None:
    train = _frame(50, 0)
    train["c"] = train["c"].fillna("x")
    preprocessor = ColumnTransformer([("cat", OrdinalEncoder(), ["c"])], sparse_threshold=0.0).fit(train)
    assert compile_transform(preprocessor, list(train.columns)) is None
    sparse = ColumnTransformer([("cat", OneHotEncoder(), ["d"])], sparse_threshold=1.0).fit(train)
    assert compile_transform(sparse, list(train.columns)) is None
