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
import pyarrow as pa
import pyarrow.compute as pc

from worker.datasets.schema import BOOLEAN, CATEGORICAL, DATETIME, TEXT, infer_column_type

QUANTILES = {"p1": 0.01, "p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
HISTOGRAM_BINS = 30
TOP_CATEGORIES = 20

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
    if values.type != pa.float64():
        values = values.cast(pa.float64())
    return values.to_numpy()


def histogram(values: np.ndarray, *, integer: bool, presorted: bool = False) -> dict[str, list[float] | list[int]]:
    """At most HISTOGRAM_BINS equal-width bins; `presorted` values are counted by binary search.

    Integer bins are whole numbers of values wide and centred on them, so every bin holds the same
    number of possible values (30 bins over 20..69 would alternately hold one value and two).
    """
    if values.size == 0:
        return {"edges": [], "counts": []}
    low, high = (float(values[0]), float(values[-1])) if presorted else (float(values.min()), float(values.max()))
    if integer:
        width = max(1.0, math.ceil((high - low + 1) / HISTOGRAM_BINS))
        edges = np.arange(low - 0.5, high + 0.5 + width, width)
        edges = edges[: int(np.searchsorted(edges, high + 0.5, side="left")) + 1]
    elif low == high:
        edges = np.array([low - 0.5, high + 0.5])
    else:
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    if presorted:
        # Bins hold [left, right), the last one [left, right], as numpy.histogram counts them.
        positions = np.searchsorted(values, edges, side="left")
        positions[-1] = values.size
        counts = np.diff(positions)
    else:
        counts, edges = np.histogram(values, bins=edges)
    return {"edges": [float(edge) for edge in edges], "counts": [int(count) for count in counts]}


def sorted_quantiles(values: np.ndarray, quantiles: list[float]) -> list[float]:
    """Quantiles of sorted values, interpolated linearly as numpy and pandas do by default."""
    positions = np.asarray(quantiles) * (values.size - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, values.size - 1)
    return list(values[lower] + (values[upper] - values[lower]) * (positions - lower))


def _numeric_profile(column: pa.ChunkedArray, *, integer: bool) -> dict[str, Any]:
    """Statistics from one sort of the values: extremes, quantiles, distinct count and histogram bins."""
    values = np.sort(numeric_values(column))
    # Sorting puts -inf first and +inf and NaN (possible in Parquet) last; the statistics use the finite middle.
    start = int(np.searchsorted(values, -np.inf, side="right"))
    stop = int(np.searchsorted(values, np.inf, side="left"))
    finite_values = values[start:stop]
    not_finite = np.concatenate([values[:start], values[stop:]])
    distinct = int(np.count_nonzero(np.diff(finite_values))) + (1 if finite_values.size else 0)
    distinct += int(np.unique(not_finite).size)
    profile: dict[str, Any] = {"distinct": distinct, "infinite": int(not_finite.size)}
    if finite_values.size == 0:
        empty = {"mean": None, "std": None, "min": None, "max": None, "quantiles": {}}
        return {**profile, **empty, "histogram": histogram(finite_values, integer=integer)}
    quantiles = sorted_quantiles(finite_values, list(QUANTILES.values()))
    return {
        **profile,
        "mean": finite(finite_values.mean()),
        # The sample standard deviation, as pandas reports it.
        "std": finite(finite_values.std(ddof=1)) if finite_values.size > 1 else None,
        "min": finite(finite_values[0]),
        "max": finite(finite_values[-1]),
        "quantiles": {name: finite(q) for name, q in zip(QUANTILES, quantiles, strict=True)},
        "histogram": histogram(finite_values, integer=integer, presorted=True),
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


def _is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)


def profile_column(column: pa.ChunkedArray, row_count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema entry and the profile of one column."""
    nulls = column.null_count
    non_null = row_count - nulls
    details: dict[str, Any] = {}
    if _is_number(column.type):
        details = _numeric_profile(column, integer=pa.types.is_integer(column.type))
        distinct = details.pop("distinct")
    else:
        distinct = int(pc.count_distinct(column, mode="only_valid").as_py()) if non_null else 0
    column_type = infer_column_type(column.type, distinct=distinct, non_null=non_null)
    profile: dict[str, Any] = {
        "type": column_type,
        "count": non_null,
        "nulls": nulls,
        "null_rate": finite(nulls / row_count) if row_count else 0.0,
        "distinct": distinct,
        **details,
    }
    if column_type in (CATEGORICAL, BOOLEAN):
        profile.update(_categorical_profile(column, non_null))
    elif column_type == DATETIME:
        profile.update(_datetime_profile(column))
    elif column_type == TEXT:
        profile.update(_text_profile(column))
    schema_entry = {"name": "", "type": column_type, "nullable": nulls > 0, "arrow_type": str(column.type)}
    return schema_entry, profile


_NULL_CODE = np.uint64(0x9E3779B97F4A7C15)
_COMBINE = np.uint64(0x100000001B3)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit word."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _column_codes(column: pa.ChunkedArray) -> np.ndarray:
    """One uint64 per row that is equal exactly when the values are (nulls equal each other)."""
    arrow_type = column.type
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        # Adding 0.0 turns -0.0 into 0.0, so equal numbers have equal bits.
        codes = (column.cast(pa.float64()).fill_null(0.0).to_numpy() + 0.0).view(np.uint64)
    elif pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        codes = column.cast(pa.int64()).fill_null(0).to_numpy().view(np.uint64)
    elif pa.types.is_temporal(arrow_type):
        codes = column.cast(pa.int64()).fill_null(0).to_numpy().view(np.uint64)
    else:
        # Strings: positions in the column's own dictionary of distinct values.
        encoded = pc.dictionary_encode(column.combine_chunks() if column.num_chunks != 1 else column.chunk(0))
        codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
    if column.null_count:
        codes = np.where(column.is_null().to_numpy(zero_copy_only=False), _NULL_CODE, codes)
    return codes


def duplicate_row_count(table: pa.Table) -> int:
    """Rows identical to an earlier row, found by one 64-bit hash per row, built a column at a time."""
    if table.num_rows == 0 or table.num_columns == 0:
        return 0
    hashes = np.zeros(table.num_rows, dtype=np.uint64)
    for column in table.columns:
        # Multiplying by an odd constant before mixing in the next column makes the hash order-sensitive.
        hashes = hashes * _COMBINE ^ _mix(_column_codes(column))
    hashes.sort()
    # Counted on the sorted hashes: numpy.unique is several times slower on a million of them.
    return int(np.count_nonzero(hashes[1:] == hashes[:-1]))


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
