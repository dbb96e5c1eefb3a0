"""Signature inference, input validation (every error case), and signature comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.signature import (
    InputError,
    coerce_columns,
    infer_signature,
    signature_diff,
    signatures_compatible,
    validate_input,
)


def _signature(*inputs: tuple[str, str, bool], outputs: dict | None = None) -> dict:
    return {
        "inputs": [{"name": name, "type": kind, "nullable": nullable} for name, kind, nullable in inputs],
        "outputs": outputs or {"type": "value"},
    }


def test_infer_signature_types_and_nullability() -> None:
    frame = pd.DataFrame(
        {
            "age": [30, 40, 50],
            "income": [1.5, np.nan, 3.0],
            "active": [True, False, True],
            "city": ["paris", "rome", None],
            "when": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
            "tier": pd.Categorical(["a", "b", "a"]),
        }
    )
    signature = infer_signature(frame, target_kind="classification", classes=[np.int64(0), np.int64(1)])
    kinds = {spec["name"]: (spec["type"], spec["nullable"]) for spec in signature["inputs"]}
    assert kinds == {
        "age": ("integer", False),
        "income": ("number", True),
        "active": ("boolean", False),
        "city": ("categorical", True),
        "when": ("datetime", False),
        "tier": ("categorical", False),
    }
    assert signature["outputs"] == {"type": "classes", "classes": [0, 1]}
    assert type(signature["outputs"]["classes"][0]) is int  # JSON-native, not numpy


def test_mostly_unique_long_strings_are_text() -> None:
    frame = pd.DataFrame({"review": [f"review number {i} was fine" for i in range(100)]})
    signature = infer_signature(frame, target_kind="regression", classes=None)
    assert signature["inputs"][0]["type"] == "text"
    assert signature["outputs"] == {"type": "value"}


def test_classification_signature_needs_classes() -> None:
    with pytest.raises(ValueError, match="classes"):
        infer_signature(pd.DataFrame({"a": [1]}), target_kind="classification", classes=None)


def test_validate_returns_signature_columns_in_order_and_drops_extras() -> None:
    signature = _signature(("b", "number", False), ("a", "integer", False))
    frame = pd.DataFrame({"a": ["1", "2"], "extra": ["x", "y"], "b": [0.5, "1.5"]})
    out = validate_input(frame, signature)
    assert list(out.columns) == ["b", "a"]
    assert out["a"].tolist() == [1, 2] and out["a"].dtype == np.int64
    assert out["b"].tolist() == [0.5, 1.5]


def test_validate_accepts_row_dicts_and_coerces_booleans() -> None:
    signature = _signature(("flag", "boolean", False), ("city", "categorical", False))
    out = validate_input([{"flag": "true", "city": 3}, {"flag": 0, "city": "rome"}], signature)
    assert out["flag"].tolist() == [True, False]
    assert out["city"].tolist() == ["3", "rome"]


def test_missing_column_is_named() -> None:
    signature = _signature(("a", "number", False), ("b", "number", False))
    with pytest.raises(InputError) as caught:
        validate_input(pd.DataFrame({"a": [1.0]}), signature)
    assert caught.value.field == "b"
    assert "missing column" in str(caught.value)


def test_uncastable_value_names_column_and_first_bad_row() -> None:
    signature = _signature(("a", "number", False))
    with pytest.raises(InputError) as caught:
        validate_input(pd.DataFrame({"a": ["1", "2", "abc", "zzz"]}), signature)
    assert caught.value.field == "a"
    assert "row 2" in str(caught.value) and "'abc'" in str(caught.value)


def test_fractional_value_in_integer_column_is_refused() -> None:
    with pytest.raises(InputError, match=r"row 1: 2.5 is not an integer"):
        validate_input([{"n": 1}, {"n": 2.5}], _signature(("n", "integer", False)))


def test_bad_boolean_and_bad_datetime_are_refused() -> None:
    with pytest.raises(InputError, match="row 0: cannot convert 'maybe' to a boolean"):
        validate_input([{"f": "maybe"}], _signature(("f", "boolean", False)))
    with pytest.raises(InputError) as caught:
        validate_input([{"t": "2024-01-01"}, {"t": "not a date"}], _signature(("t", "datetime", False)))
    assert caught.value.field == "t" and "row 1" in str(caught.value)


def test_missing_value_refused_only_where_not_nullable() -> None:
    signature = _signature(("a", "number", False), ("b", "categorical", True))
    rows = [{"a": 1.0, "b": None}]
    assert validate_input(rows, signature)["b"].isna().all()
    with pytest.raises(InputError) as caught:
        validate_input([{"a": 1.0, "b": "x"}, {"a": None, "b": "y"}], signature)
    assert caught.value.field == "a" and "row 1" in str(caught.value) and "not nullable" in str(caught.value)
    with pytest.raises(InputError, match="not nullable"):
        validate_input(pd.DataFrame({"a": [np.nan], "b": ["x"]}), signature)


def test_all_number_columns_convert_like_column_by_column() -> None:
    # Lists of numbers take a one-call path; its result and its errors match the column-by-column path.
    signature = _signature(("a", "number", False), ("b", "number", True), ("c", "number", False))
    columns = {"a": [1, "2.5", True], "b": [None, 0.5, float("nan")], "c": [-1.0, 3, False]}
    fast = coerce_columns(columns, signature)
    assert all(array.dtype == np.float64 for array in fast.values())
    np.testing.assert_array_equal(fast["a"], [1.0, 2.5, 1.0])
    np.testing.assert_array_equal(fast["b"], [np.nan, 0.5, np.nan])
    np.testing.assert_array_equal(fast["c"], [-1.0, 3.0, 0.0])
    with pytest.raises(InputError) as caught:
        coerce_columns({**columns, "c": [1.0, None, 2.0]}, signature)
    assert caught.value.field == "c" and "row 1" in str(caught.value) and "not nullable" in str(caught.value)
    with pytest.raises(InputError) as caught:
        coerce_columns({**columns, "b": [1.0, 2.0, "abc"]}, signature)
    assert caught.value.field == "b" and "row 2" in str(caught.value) and "'abc'" in str(caught.value)


def test_too_many_rows_and_no_rows() -> None:
    signature = _signature(("a", "number", False))
    with pytest.raises(InputError) as caught:
        validate_input(pd.DataFrame({"a": [1.0, 2.0, 3.0]}), signature, max_rows=2)
    assert caught.value.field == "rows" and "3 rows exceed the limit of 2" in str(caught.value)
    with pytest.raises(InputError, match="no rows"):
        validate_input([], signature)


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)


def test_signature_diff_reports_each_change() -> None:
    old = _signature(("a", "integer", False), ("b", "number", False), outputs={"type": "value"})
    new = _signature(
        ("a", "number", False), ("c", "categorical", True), outputs={"type": "classes", "classes": ["x", "y"]}
    )
    diff = signature_diff(old, new)
    assert diff["added"] == ["c"]
    assert diff["removed"] == ["b"]
    assert diff["changed"] == [
        {"name": "a", "old": {"type": "integer", "nullable": False}, "new": {"type": "number", "nullable": False}}
    ]
    assert diff["output"]["new"]["type"] == "classes"
    assert signature_diff(old, old) == {"added": [], "removed": [], "changed": [], "output": None}


def test_signatures_compatible() -> None:
    old = _signature(("a", "integer", False), ("b", "number", True))
    assert signatures_compatible(old, _signature(("a", "number", False)))  # fewer inputs, wider type
    assert not signatures_compatible(old, _signature(("a", "integer", False), ("z", "number", False)))
    assert not signatures_compatible(old, _signature(("b", "number", False)))  # now refuses nulls it got
    assert not signatures_compatible(old, _signature(("a", "categorical", False)))
    classes = {"type": "classes", "classes": [0, 1]}
    assert not signatures_compatible(old, _signature(("a", "integer", False), outputs=classes))
