"""A numpy re-implementation of fitted preprocessors, for low-latency serving.

scikit-learn validates inputs on every call, which costs ~2-3 ms for a ColumnTransformer on a 1-row
frame: more than the whole latency budget of a model server. The transforms our trainer builds
(impute, scale, log, one-hot) are a few array operations once fitted, so we compile them into plain
numpy closures. Anything we do not recognise returns None and the caller uses sklearn itself; the
loader also checks the compiled result against sklearn on the bundle's input example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]
ColumnsTransform = Callable[[dict[str, np.ndarray]], np.ndarray]


def _is_missing_object(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(lambda v: v is None or (isinstance(v, float) and v != v), 1, 1)(values).astype(bool)


def _imputer(step: Any) -> Step | None:
    if step.add_indicator or not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
        return None
    statistics = step.statistics_
    if statistics.dtype.kind == "O" and all(isinstance(v, int | float) and not isinstance(v, bool) for v in statistics):
        # The "constant" strategy keeps a numeric fill value in an object array.
        statistics = statistics.astype(np.float64)
    if statistics.dtype.kind in "fiu":
        if np.isnan(statistics).any():
            return None  # sklearn drops all-missing columns here; leave that rule to sklearn

        def impute_numbers(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.float64)
            return np.where(np.isnan(x), statistics, x)

        return impute_numbers
    if any(v is None or (isinstance(v, float) and v != v) for v in statistics):
        return None

    def impute_objects(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "O":
            return x
        return np.where(_is_missing_object(x), statistics, x)

    return impute_objects


def _scaler(step: Any, kind: str) -> Step | None:
    if kind == "StandardScaler":
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None
    elif kind == "RobustScaler":
        mean = step.center_ if step.with_centering else None
        scale = step.scale_ if step.with_scaling else None
    else:
        low, high = step.feature_range
        factor, offset, clip = step.scale_, step.min_, step.clip

        def minmax(x: np.ndarray) -> np.ndarray:
            out = np.asarray(x, dtype=np.float64) * factor + offset
            return np.clip(out, low, high) if clip else out

        return minmax

    def scale_values(x: np.ndarray) -> np.ndarray:
        out = np.asarray(x, dtype=np.float64)
        if mean is not None:
            out = out - mean
        if scale is not None:
            out = out / scale
        return out

    return scale_values


def _one_hot(step: Any) -> Step | None:
    if step.drop is not None or getattr(step, "infrequent_categories_", None) is not None:
        return None
    if step.handle_unknown not in ("ignore", "infrequent_if_exist") or step.dtype not in (np.float64, float):
        return None
    lookups = []
    for categories in step.categories_:
        if any(v is None or (isinstance(v, float) and v != v) for v in categories):
            return None  # NaN as a category: dict lookups cannot match NaN reliably
        lookups.append({value: index for index, value in enumerate(categories.tolist())})
    widths = [len(lookup) for lookup in lookups]
    offsets = np.cumsum([0, *widths[:-1]])
    total = int(sum(widths))

    def encode(x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], total), dtype=np.float64)
        for column, lookup in enumerate(lookups):
            for row, value in enumerate(x[:, column].tolist()):
                index = lookup.get(value)
                if index is not None:  # unknown categories encode as all zeros, like handle_unknown="ignore"
                    out[row, offsets[column] + index] = 1.0
        return out

    return encode


def _step(step: Any) -> Step | None:
    kind = type(step).__name__
    module = type(step).__module__
    if module.startswith("sklearn.impute") and kind == "SimpleImputer":
        return _imputer(step)
    if module.startswith("sklearn.preprocessing") and kind in ("StandardScaler", "RobustScaler", "MinMaxScaler"):
        return _scaler(step, kind)
    if module.startswith("sklearn.preprocessing") and kind == "OneHotEncoder":
        return _one_hot(step)
    if module == "serving.transforms" and kind == "Log1pTransformer":
        return lambda x: np.log1p(np.clip(np.asarray(x, dtype=np.float64), 0.0, None))
    return None


def _branch(transformer: Any) -> list[Step] | None:
    if transformer == "passthrough":
        return [lambda x: np.asarray(x, dtype=np.float64)]
    from sklearn.pipeline import Pipeline

    steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    compiled = []
    for step in steps:
        if step == "passthrough" or step is None:
            continue
        function = _step(step)
        if function is None:
            return None
        compiled.append(function)
    return compiled


def compile_transform(preprocessor: Any, names: list[str]) -> ColumnsTransform | None:
    """A numpy function columns -> matrix equal to `preprocessor.transform`, or None when not supported."""
    from sklearn.compose import ColumnTransformer

    if not isinstance(preprocessor, ColumnTransformer) or getattr(preprocessor, "sparse_output_", True):
        return None
    if getattr(preprocessor, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
        return None
    branches: list[tuple[list[str], list[Step]]] = []
    for _, transformer, columns in preprocessor.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        if not all(isinstance(c, str) and c in names for c in columns):
            return None
        steps = _branch(transformer)
        if steps is None:
            return None
        branches.append((list(columns), steps))
    if not branches:
        return None

    def transform(columns: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for selected, steps in branches:
            arrays = [columns[name] for name in selected]
            numeric = all(a.dtype.kind in "fiub" for a in arrays)
            matrix = np.column_stack([a.astype(np.float64) if numeric else a.astype(object) for a in arrays])
            for step in steps:
                matrix = step(matrix)
            parts.append(np.asarray(matrix, dtype=np.float64))
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    return transform
