"""Column types in the user's words, inferred from Arrow types and cardinality, and schema diffs."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

NUMERIC = "numeric"
INTEGER = "integer"
CATEGORICAL = "categorical"
BOOLEAN = "boolean"
DATETIME = "datetime"
TEXT = "text"
COLUMN_TYPES = (NUMERIC, INTEGER, CATEGORICAL, BOOLEAN, DATETIME, TEXT)

# A string column is categorical when it has few distinct values, absolutely or relative to its size;
# otherwise it is free text (names, ids, comments), which is profiled but not charted by category.
CATEGORICAL_MAX_DISTINCT = 50
CATEGORICAL_MAX_DISTINCT_LARGE = 1000
CATEGORICAL_MAX_RATIO = 0.05


def infer_column_type(arrow_type: pa.DataType, *, distinct: int, non_null: int) -> str:
    if pa.types.is_boolean(arrow_type):
        return BOOLEAN
    if pa.types.is_integer(arrow_type):
        return INTEGER
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NUMERIC
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type) or pa.types.is_time(arrow_type):
        return DATETIME
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        if distinct <= CATEGORICAL_MAX_DISTINCT:
            return CATEGORICAL
        if distinct <= CATEGORICAL_MAX_DISTINCT_LARGE and distinct <= CATEGORICAL_MAX_RATIO * non_null:
            return CATEGORICAL
    return TEXT


def schema_columns(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {column["name"]: column for column in schema.get("columns", [])}


def compare_schemas(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Columns added, removed and changed in type between two schemas (in the new file's column order)."""
    before, after = schema_columns(old), schema_columns(new)
    return {
        "added": [name for name in after if name not in before],
        "removed": [name for name in before if name not in after],
        "type_changed": [
            {"column": name, "from": before[name]["type"], "to": after[name]["type"]}
            for name in after
            if name in before and before[name]["type"] != after[name]["type"]
        ],
        "nullable_changed": [
            {"column": name, "from": before[name]["nullable"], "to": after[name]["nullable"]}
            for name in after
            if name in before and before[name]["nullable"] != after[name]["nullable"]
        ],
    }
