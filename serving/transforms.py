"""Feature transforms of our own that travel inside model bundles (skops loads them by this module path).

Keep this module small and free of side effects: the loader trusts `serving.transforms.*` types.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

DATETIME_PARTS = ("year", "month", "day", "weekday", "hour")
# Feature name -> pandas accessor attribute.
_ACCESSORS = {"year": "year", "month": "month", "day": "day", "weekday": "day_of_week", "hour": "hour"}


def _feature_names(transformer: Any, input_features: Any) -> list[str]:
    if input_features is not None:
        return [str(name) for name in input_features]
    if hasattr(transformer, "feature_names_in_"):
        return [str(name) for name in transformer.feature_names_in_]
    return [f"x{i}" for i in range(transformer.n_features_in_)]


class Log1pTransformer(TransformerMixin, BaseEstimator):
    """log(1 + x), with negative values clipped to 0 first so that the log is always defined."""

    def fit(self, X: Any, y: Any = None) -> Log1pTransformer:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.log1p(np.clip(np.asarray(X, dtype=np.float64), 0.0, None))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(_feature_names(self, input_features), dtype=object)


class DatetimeFeatures(TransformerMixin, BaseEstimator):
    """Each datetime column becomes year, month, day, weekday and hour (NaN where the value is missing)."""

    def fit(self, X: Any, y: Any = None) -> DatetimeFeatures:
        frame = pd.DataFrame(X)
        self.n_features_in_ = frame.shape[1]
        self.columns_ = [str(name) for name in frame.columns]
        return self

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X)
        parts = []
        for position in range(frame.shape[1]):
            values = pd.to_datetime(frame.iloc[:, position], errors="coerce")
            accessor = values.dt
            for part in DATETIME_PARTS:
                parts.append(getattr(accessor, _ACCESSORS[part]).to_numpy(dtype=np.float64, na_value=np.nan))
        return np.column_stack(parts) if parts else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = input_features if input_features is not None else self.columns_
        return np.asarray([f"{name}_{part}" for name in names for part in DATETIME_PARTS], dtype=object)
