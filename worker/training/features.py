"""Declarative feature engineering: a config dict becomes a fitted-later sklearn ColumnTransformer.

Column kinds come from the model signature rules (serving.signature): integer/number/boolean columns
are numeric, categorical columns are one-hot encoded, datetime columns become year/month/day/weekday/hour.
Free-text columns are not used as features: they are left out of the default selection and refused when
named explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler

from serving.signature import column_type
from serving.transforms import DatetimeFeatures, Log1pTransformer
from worker.training.errors import ConfigError

FEATURE_KEYS = ("columns", "impute", "scale", "one_hot", "log")
NUMERIC_IMPUTE = ("mean", "median", "most_frequent", "constant")
CATEGORICAL_IMPUTE = ("most_frequent", "constant")
SCALERS = ("standard", "minmax", "robust", "none")
NUMERIC_TYPES = ("integer", "number", "boolean")
# Fill values for the "constant" imputation strategy.
NUMERIC_FILL = 0.0
CATEGORICAL_FILL = "missing"


def check_feature_config(feature_config: Any) -> dict:
    """The config with defaults filled in, checked for shape only (columns are checked against data later)."""
    if feature_config is None:
        feature_config = {}
    if not isinstance(feature_config, Mapping):
        raise ConfigError("features", "must be an object")
    unknown = [key for key in feature_config if key not in FEATURE_KEYS]
    if unknown:
        raise ConfigError(f"features.{unknown[0]}", f"unknown setting; expected one of {', '.join(FEATURE_KEYS)}")
    config = {"columns": None, "impute": {}, "scale": "standard", "one_hot": True, "log": [], **feature_config}
    columns = config["columns"]
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise ConfigError("features.columns", "must be a list of column names")
    impute = config["impute"]
    if not isinstance(impute, Mapping):
        raise ConfigError("features.impute", "must be an object with 'numeric' and/or 'categorical'")
    for key in impute:
        if key not in ("numeric", "categorical"):
            raise ConfigError(f"features.impute.{key}", "unknown setting; expected numeric or categorical")
    impute = {"numeric": "mean", "categorical": "most_frequent", **impute}
    if impute["numeric"] not in NUMERIC_IMPUTE:
        raise ConfigError("features.impute.numeric", f"must be one of {', '.join(NUMERIC_IMPUTE)}")
    if impute["categorical"] not in CATEGORICAL_IMPUTE:
        raise ConfigError("features.impute.categorical", f"must be one of {', '.join(CATEGORICAL_IMPUTE)}")
    config["impute"] = impute
    if config["scale"] not in SCALERS:
        raise ConfigError("features.scale", f"must be one of {', '.join(SCALERS)}")
    one_hot = config["one_hot"]
    if not isinstance(one_hot, bool) and not (isinstance(one_hot, list) and all(isinstance(c, str) for c in one_hot)):
        raise ConfigError("features.one_hot", "must be true, false or a list of column names")
    if not isinstance(config["log"], list) or not all(isinstance(c, str) for c in config["log"]):
        raise ConfigError("features.log", "must be a list of column names")
    return config


def select_columns(feature_config: Any, frame: pd.DataFrame, target: str | None = None) -> list[str]:
    """The feature columns: the configured selection, or every usable column but the target."""
    config = check_feature_config(feature_config)
    if config["columns"] is None:
        return [str(c) for c in frame.columns if c != target and column_type(frame[c]) != "text"]
    for name in config["columns"]:
        if name not in frame.columns:
            raise ConfigError("features.columns", f"unknown column {name!r}")
        if name == target:
            raise ConfigError("features.columns", f"the target {name!r} cannot be a feature")
        if column_type(frame[name]) == "text":
            raise ConfigError("features.columns", f"{name!r} is free text, which is not supported as a feature")
    if not config["columns"]:
        raise ConfigError("features.columns", "select at least one column")
    return list(config["columns"])


def _scaler(kind: str) -> Any:
    return {"standard": StandardScaler(), "minmax": MinMaxScaler(), "robust": RobustScaler(), "none": "passthrough"}[
        kind
    ]


def _numeric_imputer(strategy: str) -> SimpleImputer:
    if strategy == "constant":
        return SimpleImputer(strategy="constant", fill_value=NUMERIC_FILL)
    return SimpleImputer(strategy=strategy)


def _encoder(one_hot: bool | list[str]) -> Any:
    if one_hot is False:
        # Without one-hot, categories become integer codes; unseen ones map to -1 instead of failing.
        return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    return OneHotEncoder(handle_unknown="ignore", sparse_output=False)


def build_preprocessor(feature_config: dict, frame: pd.DataFrame) -> ColumnTransformer:
    """An unfitted ColumnTransformer for `frame`'s feature columns (the target must not be in `frame`)."""
    config = check_feature_config(feature_config)
    columns = select_columns(config, frame)
    kinds = {name: column_type(frame[name]) for name in columns}
    one_hot = config["one_hot"]
    for field in ("one_hot", "log"):
        listed = config[field] if isinstance(config[field], list) else []
        for name in listed:
            if name not in kinds:
                raise ConfigError(f"features.{field}", f"{name!r} is not a selected feature column")
    for name in config["log"]:
        if kinds[name] not in NUMERIC_TYPES:
            raise ConfigError("features.log", f"{name!r} is not numeric, so it cannot be log-transformed")
    forced_one_hot = set(one_hot) if isinstance(one_hot, list) else set()
    categorical = [n for n in columns if kinds[n] == "categorical" or (n in forced_one_hot and kinds[n] != "datetime")]
    numeric_categorical = [n for n in categorical if kinds[n] in NUMERIC_TYPES]
    string_categorical = [n for n in categorical if n not in numeric_categorical]
    logged = [n for n in config["log"] if n not in categorical]
    numeric = [n for n in columns if kinds[n] in NUMERIC_TYPES and n not in categorical and n not in logged]
    datetimes = [n for n in columns if kinds[n] == "datetime"]

    impute = config["impute"]
    scaler = config["scale"]
    categorical_fill: Any = CATEGORICAL_FILL
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        steps = [("impute", _numeric_imputer(impute["numeric"])), ("scale", _scaler(scaler))]
        transformers.append(("numeric", Pipeline(steps), numeric))
    if logged:
        steps = [
            ("impute", _numeric_imputer(impute["numeric"])),
            ("log", Log1pTransformer()),
            ("scale", _scaler(scaler)),
        ]
        transformers.append(("log", Pipeline(steps), logged))
    for name, selected, fill in (
        ("categorical", string_categorical, categorical_fill),
        ("categorical_numeric", numeric_categorical, -1),
    ):
        if not selected:
            continue
        if impute["categorical"] == "constant":
            imputer = SimpleImputer(strategy="constant", fill_value=fill)
        else:
            imputer = SimpleImputer(strategy="most_frequent")
        transformers.append((name, Pipeline([("impute", imputer), ("encode", _encoder(one_hot))]), selected))
    if datetimes:
        steps = [
            ("parts", DatetimeFeatures()),
            ("impute", _numeric_imputer(impute["numeric"])),
            ("scale", _scaler(scaler)),
        ]
        transformers.append(("datetime", Pipeline(steps), datetimes))
    if not transformers:
        raise ConfigError("features.columns", "no usable feature columns")
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
