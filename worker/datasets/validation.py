"""Validation rules and the validation report of a dataset version.

Rules (set per dataset, applied to each new version):

    {"columns": {"age": {"max_null_rate": 0.05, "min": 0, "max": 120, "allowed": [...], "blocking": true}},
     "target": "label", "max_duplicate_rate": 0.01}

The report is a list of checks, each pass/warn/fail with a message. A failed check of a column rule
marked `blocking`, or a missing target column, makes the version `blocking_failed`: it is kept,
but nothing may train on it.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from worker.datasets.profile import value_counts
from worker.datasets.schema import INTEGER, NUMERIC, compare_schemas

PASS, WARN, FAIL = "pass", "warn", "fail"
COLUMN_RULE_KEYS = {"max_null_rate", "min", "max", "allowed", "blocking"}
TOP_LEVEL_KEYS = {"columns", "target", "max_duplicate_rate"}
MAX_ALLOWED_VALUES = 10_000
EXAMPLES_SHOWN = 5


class RulesError(ValueError):
    """The rules are malformed; `path` says where (such as `columns.age.min`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def _rate(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise RulesError(path, f"must be a number from 0 to 1; got {value!r}")
    return float(value)


def _bound(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(path, f"must be a finite number; got {value!r}")
    return value


def parse_rules(raw: Any) -> dict[str, Any]:
    """Check the shape of a rules document and return it in canonical form; raises RulesError."""
    if raw in (None, ""):
        return {}
    if not isinstance(raw, dict):
        raise RulesError("", f"rules must be a JSON object; got {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise RulesError(unknown[0], f"unknown key; use {', '.join(sorted(TOP_LEVEL_KEYS))}")
    rules: dict[str, Any] = {}
    target = raw.get("target")
    if target is not None:
        if not isinstance(target, str) or not target.strip():
            raise RulesError("target", "must be a column name")
        rules["target"] = target
    if raw.get("max_duplicate_rate") is not None:
        rules["max_duplicate_rate"] = _rate(raw["max_duplicate_rate"], "max_duplicate_rate")
    columns = raw.get("columns")
    if columns is None:
        columns = {}
    if not isinstance(columns, dict):
        raise RulesError("columns", "must be an object of column name to rules")
    parsed_columns: dict[str, dict[str, Any]] = {}
    for name, column_rules in columns.items():
        path = f"columns.{name}"
        if not isinstance(column_rules, dict):
            raise RulesError(path, 'must be an object such as {"max_null_rate": 0.05}')
        unknown = sorted(set(column_rules) - COLUMN_RULE_KEYS)
        if unknown:
            raise RulesError(f"{path}.{unknown[0]}", f"unknown rule; use {', '.join(sorted(COLUMN_RULE_KEYS))}")
        parsed: dict[str, Any] = {}
        if column_rules.get("max_null_rate") is not None:
            parsed["max_null_rate"] = _rate(column_rules["max_null_rate"], f"{path}.max_null_rate")
        for key in ("min", "max"):
            if column_rules.get(key) is not None:
                parsed[key] = _bound(column_rules[key], f"{path}.{key}")
        if "min" in parsed and "max" in parsed and parsed["min"] > parsed["max"]:
            raise RulesError(f"{path}.min", f"is greater than max ({parsed['min']} > {parsed['max']})")
        if column_rules.get("allowed") is not None:
            allowed = column_rules["allowed"]
            if not isinstance(allowed, list) or not allowed or len(allowed) > MAX_ALLOWED_VALUES:
                raise RulesError(f"{path}.allowed", f"must be a list of 1 to {MAX_ALLOWED_VALUES:,} values")
            if any(isinstance(value, dict | list) for value in allowed):
                raise RulesError(f"{path}.allowed", "values must be strings, numbers or booleans")
            parsed["allowed"] = allowed
        blocking = column_rules.get("blocking", False)
        if not isinstance(blocking, bool):
            raise RulesError(f"{path}.blocking", f"must be true or false; got {blocking!r}")
        parsed["blocking"] = blocking
        parsed_columns[name] = parsed
    if parsed_columns:
        rules["columns"] = parsed_columns
    return rules


def _check(name: str, status: str, message: str, *, column: str | None = None, blocking: bool = False) -> dict:
    return {
        "check": name,
        "column": column,
        "status": status,
        "blocking": blocking and status == FAIL,
        "message": message,
    }


def _percent(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _schema_checks(schema: dict[str, Any], parent_schema: dict[str, Any] | None, parent_label: str) -> list[dict]:
    if parent_schema is None:
        return [_check("schema", PASS, "First version: no earlier schema to compare with.")]
    diff = compare_schemas(parent_schema, schema)
    checks = []
    if diff["added"]:
        names = ", ".join(repr(n) for n in diff["added"])
        checks.append(_check("schema.columns_added", WARN, f"Columns added since {parent_label}: {names}."))
    if diff["removed"]:
        names = ", ".join(repr(n) for n in diff["removed"])
        checks.append(_check("schema.columns_removed", FAIL, f"Columns removed since {parent_label}: {names}."))
    for change in diff["type_changed"]:
        column = change["column"]
        message = f"Column {column!r} changed type from {change['from']} to {change['to']} since {parent_label}."
        checks.append(_check("schema.type_changed", FAIL, message, column=column))
    if not checks:
        checks.append(_check("schema", PASS, f"Same columns and types as {parent_label}."))
    return checks


def _examples(values: pa.ChunkedArray) -> str:
    shown = [repr(value) for value, _ in value_counts(values)[:EXAMPLES_SHOWN]]
    return ", ".join(shown)


def _column_checks(table: pa.Table, profile: dict[str, Any], name: str, rules: dict[str, Any]) -> list[dict]:
    blocking = rules.get("blocking", False)
    if name not in profile["columns"]:
        return [
            _check(
                "column.present",
                FAIL,
                f"Column {name!r} has rules but is not in the file.",
                column=name,
                blocking=blocking,
            )
        ]
    stats = profile["columns"][name]
    column = table.column(name)
    checks = []
    if "max_null_rate" in rules:
        rate, limit = stats["null_rate"], rules["max_null_rate"]
        status = FAIL if rate > limit else PASS
        message = f"{stats['nulls']:,} missing values ({_percent(rate)}); the limit is {_percent(limit)}."
        checks.append(_check("column.max_null_rate", status, message, column=name, blocking=blocking))
    for key, compare, word in (("min", pc.less, "below"), ("max", pc.greater, "above")):
        if key not in rules:
            continue
        if stats["type"] not in (NUMERIC, INTEGER):
            message = f"A {key} rule needs a numeric column; {name!r} is {stats['type']}."
            checks.append(_check(f"column.{key}", FAIL, message, column=name, blocking=blocking))
            continue
        outside = int(pc.sum(compare(column, rules[key])).as_py() or 0)
        status = FAIL if outside else PASS
        message = f"{outside:,} values {word} {rules[key]}." if outside else f"No value {word} {rules[key]}."
        checks.append(_check(f"column.{key}", status, message, column=name, blocking=blocking))
    if "allowed" in rules:
        checks.append(_allowed_check(column, name, rules["allowed"], blocking))
    return checks


def _allowed_check(column: pa.ChunkedArray, name: str, allowed: list[Any], blocking: bool) -> dict:
    try:
        value_set = pa.array(allowed).cast(column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        message = f"The allowed values do not match the column's type ({column.type})."
        return _check("column.allowed", FAIL, message, column=name, blocking=blocking)
    present = pc.drop_null(column)
    unexpected = pc.filter(present, pc.invert(pc.is_in(present, value_set=value_set)))
    if len(unexpected) == 0:
        return _check("column.allowed", PASS, "Every value is one of the allowed values.", column=name)
    message = f"{len(unexpected):,} values are not allowed, such as {_examples(unexpected)}."
    return _check("column.allowed", FAIL, message, column=name, blocking=blocking)


def validate(
    table: pa.Table,
    schema: dict[str, Any],
    profile: dict[str, Any],
    rules: dict[str, Any],
    *,
    parent_schema: dict[str, Any] | None = None,
    parent_label: str = "the previous version",
) -> dict[str, Any]:
    """The validation report: every check with its status, the overall status and `blocking_failed`."""
    checks = _schema_checks(schema, parent_schema, parent_label)
    target = rules.get("target")
    if target:
        if target not in profile["columns"]:
            checks.append(
                _check("target", FAIL, f"The target column {target!r} is missing.", column=target, blocking=True)
            )
        elif profile["columns"][target]["nulls"]:
            nulls = profile["columns"][target]["nulls"]
            checks.append(
                _check("target", WARN, f"The target column {target!r} has {nulls:,} missing values.", column=target)
            )
        else:
            checks.append(_check("target", PASS, f"The target column {target!r} is present.", column=target))
    duplicates, rate = profile["duplicate_rows"], profile["duplicate_rate"]
    limit = rules.get("max_duplicate_rate")
    if limit is not None:
        status = FAIL if rate > limit else PASS
        message = f"{duplicates:,} duplicate rows ({_percent(rate)}); the limit is {_percent(limit)}."
    else:
        status = WARN if duplicates else PASS
        message = f"{duplicates:,} duplicate rows ({_percent(rate)})." if duplicates else "No duplicate rows."
    checks.append(_check("duplicates", status, message))
    for name, column_rules in rules.get("columns", {}).items():
        checks.extend(_column_checks(table, profile, name, column_rules))
    counts = {state: sum(1 for c in checks if c["status"] == state) for state in (PASS, WARN, FAIL)}
    overall = FAIL if counts[FAIL] else WARN if counts[WARN] else PASS
    return {
        "status": overall,
        "blocking_failed": any(check["blocking"] for check in checks),
        "summary": counts,
        "checks": checks,
    }
