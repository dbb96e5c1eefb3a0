"""MLflow /invocations bodies and KServe V2 infer requests become frames; malformed ones raise InputError."""

from __future__ import annotations

import json

import pytest

from serving.signature import InputError, payload_to_columns, rows_to_frame


def test_dataframe_split() -> None:
    frame = rows_to_frame({"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}})
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].tolist() == [1, 2] and frame["b"].tolist() == ["x", "y"]


def test_dataframe_records_with_a_missing_key() -> None:
    frame = rows_to_frame({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2}]})
    assert frame["a"].tolist() == [1, 2]
    assert frame["b"].iloc[0] == "x" and frame["b"].isna().iloc[1]


def test_instances_as_objects_and_as_lists_with_columns() -> None:
    assert rows_to_frame({"instances": [{"a": 1.5}]})["a"].tolist() == [1.5]
    frame = rows_to_frame({"instances": [[1, 2], [3, 4]]}, columns=["a", "b"])
    assert frame["b"].tolist() == [2, 4]
    with pytest.raises(InputError, match="column names"):
        rows_to_frame({"instances": [[1, 2]]})


def test_mlflow_inputs_as_columns() -> None:
    frame = rows_to_frame({"inputs": {"a": [1, 2], "b": ["x", "y"]}})
    assert frame["b"].tolist() == ["x", "y"]


def test_kserve_v2_named_tensors() -> None:
    payload = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            {"name": "b", "shape": [2, 1], "datatype": "BYTES", "data": [["x"], ["y"]]},
            {"name": "c", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        ]
    }
    frame = rows_to_frame(payload)
    assert frame["a"].tolist() == [1.0, 2.0]
    assert frame["b"].tolist() == ["x", "y"]
    assert frame["c"].tolist() == [True, False]


def test_kserve_v2_matrix_uses_signature_columns() -> None:
    payload = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    columns = payload_to_columns(payload, columns=["a", "b"])
    assert columns == {"a": [1, 3], "b": [2, 4]}
    with pytest.raises(InputError, match="one 1-D input per column"):
        payload_to_columns(payload)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({}, "exactly one of"),
        ({"instances": [], "inputs": {}}, "exactly one of"),
        ({"dataframe_split": {"columns": ["a"]}}, "'columns' and 'data'"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}, "row 0 has 1 values for 2 columns"),
        ({"dataframe_records": {"a": 1}}, "must be a list"),
        ({"instances": [{"a": 1}, [1]]}, "all be objects or all be lists"),
        ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "does not match"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}, "known datatype"),
        ({"inputs": [{"name": "a", "shape": "2", "datatype": "FP32", "data": [1, 2]}]}, "bad shape"),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                    {"name": "b", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "different lengths",
        ),
    ],
)
def test_malformed_payloads(payload: object, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        rows_to_frame(payload)


def test_the_depth_scan_counts_brackets_outside_strings_only() -> None:
    from serving.app import MAX_JSON_DEPTH, json_too_deep

    def nested(depth: int) -> bytes:
        return b'{"inputs": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"

    assert not json_too_deep(nested(MAX_JSON_DEPTH)) and json_too_deep(nested(MAX_JSON_DEPTH + 1))
    # Brackets and escaped quotes inside strings are text, however many.
    text = json.dumps({"dataframe_records": [{"note": '[[[{ \\" "' * 40, "x": [1]}] * 100}).encode()
    assert not json_too_deep(text)
    assert json.loads(text)
    # An unbalanced body that opens more levels than the limit is refused too (a parser would recurse first).
    assert json_too_deep(b"[" * 5000)
    assert not json_too_deep(b"[}" * 100), "malformed but shallow: left to the parser"
