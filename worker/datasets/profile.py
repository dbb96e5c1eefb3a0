"""Per-column profiles: the reference that validation checks now and drift detection compares with later.

Works column by column on an Arrow table, so at most one column is copied into numpy at a time.
Every number is a plain, finite Python float or int (NaN and infinity become None), so a profile
is valid JSON and fits a Postgres JSON column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from worker.datasets.schema import BOOLEAN, CATEGORICAL, DATETIME, INTEGER, NUMERIC, TEXT, infer_column_type

QUANTILES = {"p1": 0.01, "p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
HISTOGRAM_BINS = 30
TOP_CATEGORIES = 20
# Rows hashed per step when counting duplicate rows; bounds the pandas copy of the table.
DUPLICATE_BATCH_ROWS = 131_072

Progress = Callable[[float, str], None]


def finite(value: Any) -> float | None:
    """A JSON-safe float: None for NaN, infinity and missing values."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _python(value: Any) -> Any:
    """An Arrow or numpy scalar as a JSON-safe Python value."""
    if hasattr(value, "as_py"):
        value = value.as_py()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return finite(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def numeric_values(column: pa.ChunkedArray) -> np.ndarray:
    """The non-null values as float64."""
    values = pc.drop_null(column)
    if not pa.types.is_floating(values.type) or values.type != pa.float64():
        values = values.cast(pa.float64())
    return values.to_numpy()


def histogram(values: np.ndarray, *, integer: bool) -> dict[str, list[float] | list[int]]:
    """About HISTOGRAM_BINS equal-width bins; integers with a small range get one bin per value."""
    if values.size == 0:
        return {"edges": [], "counts": []}
    low, high = float(values.min()), float(values.max())
    if integer and high - low + 1 <= HISTOGRAM_BINS:
        edges = np.arange(low - 0.5, high + 1.5, 1.0)
    elif low == high:
        edges = np.array([low - 0.5, high + 0.5])
    else:
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts, edges = np.histogram(values, bins=edges)
    return {"edges": [float(edge) for edge in edges], "counts": [int(count) for count in counts]}


def _numeric_profile(column: pa.ChunkedArray, *, integer: bool) -> dict[str, Any]:
    values = numeric_values(column)
    finite_mask = np.isfinite(values)
    infinite = int(values.size - finite_mask.sum())
    if infinite:
        values = values[finite_mask]
    if values.size == 0:
        empty = {"mean": None, "std": None, "min": None, "max": None, "quantiles": {}}
        return {**empty, "histogram": histogram(values, integer=integer), "infinite": infinite}
    quantiles = np.quantile(values, list(QUANTILES.values()))
    return {
        "mean": finite(values.mean()),
        # The sample standard deviation, as pandas reports it.
        "std": finite(values.std(ddof=1)) if values.size > 1 else None,
        "min": finite(values.min()),
        "max": finite(values.max()),
        "quantiles": {name: finite(q) for name, q in zip(QUANTILES, quantiles, strict=True)},
        "histogram": histogram(values, integer=integer),
        "infinite": infinite,
    }


def value_counts(column: pa.ChunkedArray) -> list[tuple[Any, int]]:
    """(value, count) for every non-null value, most frequent first, ties by value for a stable order."""
    counts = pc.value_counts(pc.drop_null(column))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return sorted(pairs, key=lambda pair: (-pair[1], str(pair[0])))


def _categorical_profile(column: pa.ChunkedArray, non_null: int) -> dict[str, Any]:
    counts = value_counts(column)
    top = [{"value": _python(value), "count": int(count)} for value, count in counts[:TOP_CATEGORIES]]
    return {"top": top, "other_count": int(non_null - sum(item["count"] for item in top))}


def _datetime_profile(column: pa.ChunkedArray) -> dict[str, Any]:
    extremes = pc.min_max(column)
    return {"min": _python(extremes["min"]), "max": _python(extremes["max"])}


def _text_profile(column: pa.ChunkedArray) -> dict[str, Any]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    lengths = pc.utf8_length(pc.drop_null(column))
    if len(lengths) == 0:
        return {"length_min": None, "length_mean": None, "length_max": None}
    extremes = pc.min_max(lengths)
    return {
        "length_min": _python(extremes["min"]),
        "length_mean": finite(pc.mean(lengths).as_py()),
        "length_max": _python(extremes["max"]),
    }


def profile_column(column: pa.ChunkedArray, row_count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema entry and the profile of one column."""
    nulls = column.null_count
    non_null = row_count - nulls
    distinct = int(pc.count_distinct(column, mode="only_valid").as_py()) if non_null else 0
    column_type = infer_column_type(column.type, distinct=distinct, non_null=non_null)
    profile: dict[str, Any] = {
        "type": column_type,
        "count": non_null,
        "nulls": nulls,
        "null_rate": finite(nulls / row_count) if row_count else 0.0,
        "distinct": distinct,
    }
    if column_type in (NUMERIC, INTEGER):
        profile.update(_numeric_profile(column, integer=column_type == INTEGER))
    elif column_type in (CATEGORICAL, BOOLEAN):
        profile.update(_categorical_profile(column, non_null))
    elif column_type == DATETIME:
        profile.update(_datetime_profile(column))
    elif column_type == TEXT:
        profile.update(_text_profile(column))
    schema_entry = {"name": "", "type": column_type, "nullable": nulls > 0, "arrow_type": str(column.type)}
    return schema_entry, profile


def duplicate_row_count(table: pa.Table) -> int:
    """Rows identical to an earlier row, found by a 64-bit hash per row computed in batches."""
    if table.num_rows == 0 or table.num_columns == 0:
        return 0
    hashes = np.empty(table.num_rows, dtype=np.uint64)
    start = 0
    for batch in table.to_batches(max_chunksize=DUPLICATE_BATCH_ROWS):
        frame = batch.to_pandas()
        hashes[start : start + len(frame)] = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        start += len(frame)
    return int(table.num_rows - np.unique(hashes).size)


def describe_table(table: pa.Table, progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inferred schema and the full profile of a table."""
    row_count = table.num_rows
    schema_columns: list[dict[str, Any]] = []
    profiles: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(table.column_names):
        entry, profile = profile_column(table.column(index), row_count)
        entry["name"] = name
        schema_columns.append(entry)
        profiles[name] = profile
        if progress:
            progress((index + 1) / (table.num_columns + 1), f"profiled column {name!r} ({entry['type']})")
    duplicates = duplicate_row_count(table)
    schema = {"columns": schema_columns}
    profile = {
        "row_count": row_count,
        "column_count": table.num_columns,
        "duplicate_rows": duplicates,
        "duplicate_rate": finite(duplicates / row_count) if row_count else 0.0,
        "columns": profiles,
    }
    return schema, profile
