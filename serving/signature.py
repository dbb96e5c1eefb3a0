"""Input signatures: what columns a model takes, how request data is checked and coerced to them.

The coercion works column by column on numpy arrays and builds a DataFrame only at the end, because
pandas per-column operations cost tens of microseconds each and a 1-row request must stay well under
a millisecond. `coerce_columns` is the shared core; `validate_input` wraps it for callers that want a frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

COLUMN_TYPES = ("integer", "number", "boolean", "categorical", "text", "datetime")
TASKS = ("classification", "regression")

# A string column is "text" rather than "categorical" when it has more than this many distinct values
# and most of its values are distinct: free text cannot be one-hot encoded usefully.
TEXT_MIN_DISTINCT = 50
TEXT_DISTINCT_RATIO = 0.5

_INT64_LIMIT = 2.0**63
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class InputError(ValueError):
    """Request data that does not fit a model's signature; `field` names the column (or "rows", "payload")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def json_scalar(value: Any) -> Any:
    """A JSON-native version of a scalar (numpy scalars, NaN, timestamps); used for classes and examples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp | np.datetime64):
        return pd.Timestamp(value).isoformat()
    return value


# --------------------------------------------------------------------------------------------- inference


def column_type(series: pd.Series) -> str:
    """The signature type of a column: integer, number, boolean, categorical, text or datetime."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if isinstance(dtype, pd.CategoricalDtype):
        return "categorical"
    values = series.dropna()
    if len(values) and all(isinstance(v, bool | np.bool_) for v in values):
        return "boolean"
    if len(values) and all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return "number"
    distinct = values.nunique()
    if distinct > TEXT_MIN_DISTINCT and distinct > TEXT_DISTINCT_RATIO * len(values):
        return "text"
    return "categorical"


def infer_signature(df: pd.DataFrame, *, target_kind: str, classes: list | None) -> dict:
    """Describe the columns of `df` (the model's features) and the model's output."""
    if target_kind not in TASKS:
        raise ValueError(f"target_kind must be one of {', '.join(TASKS)}, not {target_kind!r}")
    inputs = [
        {"name": str(name), "type": column_type(df[name]), "nullable": bool(df[name].isna().any())}
        for name in df.columns
    ]
    if target_kind == "classification":
        if not classes:
            raise ValueError("a classification signature needs its classes")
        outputs: dict = {"type": "classes", "classes": [json_scalar(c) for c in classes]}
    else:
        outputs = {"type": "value"}
    return {"inputs": inputs, "outputs": outputs}


def check_signature(signature: Any) -> None:
    """Raise ValueError when `signature` is not a well-formed signature dict."""
    if not isinstance(signature, Mapping) or not isinstance(signature.get("inputs"), list):
        raise ValueError("a signature is a dict with an 'inputs' list")
    seen: set[str] = set()
    for spec in signature["inputs"]:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError("each signature input needs a 'name'")
        if spec.get("type") not in COLUMN_TYPES:
            raise ValueError(f"input {spec['name']!r} has unknown type {spec.get('type')!r}")
        if spec["name"] in seen:
            raise ValueError(f"input {spec['name']!r} appears twice")
        seen.add(spec["name"])
    outputs = signature.get("outputs")
    if not isinstance(outputs, Mapping) or outputs.get("type") not in ("classes", "value"):
        raise ValueError("signature outputs must be {'type': 'classes', ...} or {'type': 'value'}")


# -------------------------------------------------------------------------------------------- validation


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _to_float(name: str, values: np.ndarray | list) -> np.ndarray:
    array = values if isinstance(values, np.ndarray) else None
    if array is not None and array.dtype.kind in "fiub":
        return array.astype(np.float64, copy=False)
    try:
        # numpy turns None into NaN and parses numeric strings itself, which is the common case.
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is not None and array.ndim == 1:
        return array
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        if _is_missing(value):
            out[row] = np.nan
            continue
        try:
            if isinstance(value, bool | np.bool_):
                raise TypeError
            out[row] = float(value)
        except (TypeError, ValueError):
            raise InputError(name, f"row {row}: cannot convert {value!r} to a number") from None
    return out


def _to_bool(name: str, values: np.ndarray | list) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "b":
        return values
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        # Numbers (a binary V2 input of any numeric type) are checked as a whole: 0, 1 or missing.
        numbers = values.astype(np.float64)
        bad = np.flatnonzero(~np.isnan(numbers) & (numbers != 0) & (numbers != 1))
        if len(bad):
            row = int(bad[0])
            raise InputError(name, f"row {row}: cannot convert {values[row].item()!r} to a boolean")
        return numbers if np.isnan(numbers).any() else numbers.astype(bool)
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        if _is_missing(value):
            out[row] = np.nan
        elif isinstance(value, bool | np.bool_) or (isinstance(value, int | float | np.number) and value in (0, 1)):
            out[row] = float(value)
        elif isinstance(value, str) and value.strip().lower() in _TRUE:
            out[row] = 1.0
        elif isinstance(value, str) and value.strip().lower() in _FALSE:
            out[row] = 0.0
        else:
            raise InputError(name, f"row {row}: cannot convert {value!r} to a boolean")
    if np.isnan(out).any():
        # Missing booleans travel as 0/1/NaN floats, which every numeric transform understands.
        return out
    return out.astype(bool)


def _to_string(values: np.ndarray | list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
        out[row] = value if type(value) is str else (np.nan if _is_missing(value) else str(value))
    return out


def _to_datetime(name: str, values: np.ndarray | list) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        return values.astype("datetime64[ns]")
    raw = pd.Series(values, dtype=object)
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy() & ~raw.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(name, f"row {row}: cannot convert {raw.iloc[row]!r} to a datetime")
    # Datetimes are compared in UTC; naive values are taken to be UTC already.
    return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _missing_mask(kind: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f":
        return np.isnan(array)
    if array.dtype.kind == "M":
        return np.isnat(array)
    if array.dtype.kind == "O":
        return np.fromiter((_is_missing(v) for v in array), dtype=bool, count=len(array))
    return np.zeros(len(array), dtype=bool)


def _coerce(spec: Mapping, values: np.ndarray | list) -> np.ndarray:
    name, kind = spec["name"], spec["type"]
    if kind == "number":
        array = _to_float(name, values)
    elif kind == "integer":
        if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
            array = values
        else:
            array = _to_float(name, values)
            finite = array[~np.isnan(array)]
            fractional = np.flatnonzero(finite != np.round(finite))
            if len(fractional):
                row = int(np.flatnonzero(~np.isnan(array))[fractional[0]])
                raise InputError(name, f"row {row}: {float(array[row])!r} is not an integer")
            beyond = np.flatnonzero(np.abs(finite) >= _INT64_LIMIT)
            if len(beyond):
                row = int(np.flatnonzero(~np.isnan(array))[beyond[0]])
                raise InputError(name, f"row {row}: {float(array[row])!r} is beyond the 64-bit integer range")
            if len(finite) == len(array):
                array = array.astype(np.int64)
    elif kind == "boolean":
        array = _to_bool(name, values)
    elif kind == "datetime":
        array = _to_datetime(name, values)
    else:
        array = _to_string(values)
    if not spec.get("nullable", False):
        missing = _missing_mask(kind, array)
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(name, f"row {row}: a value is required (the column is not nullable)")
    return array


def _raw_columns(data: Any, names: list[str]) -> tuple[dict[str, Any], int]:
    """Column name -> values (ndarray or list) for the signature's names, and the row count."""
    if isinstance(data, pd.DataFrame):
        missing = [n for n in names if n not in data.columns]
        if missing:
            raise InputError(missing[0], f"missing column (missing: {', '.join(missing)})")
        dtypes = set(data.dtypes)
        if len(dtypes) == 1 and data.columns.is_unique and isinstance(next(iter(dtypes)), np.dtype):
            # One numpy dtype: one to_numpy() call instead of a pandas lookup per column (~10 us each).
            matrix = data.to_numpy()
            return {n: matrix[:, i] for n, i in zip(names, data.columns.get_indexer(names), strict=True)}, len(data)
        return {n: data[n].to_numpy() for n in names}, len(data)
    if isinstance(data, Mapping):
        missing = [n for n in names if n not in data]
        if missing:
            raise InputError(missing[0], f"missing column (missing: {', '.join(missing)})")
        columns = {n: data[n] if isinstance(data[n], np.ndarray | list) else list(data[n]) for n in names}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise InputError("payload", f"columns have different lengths: {sorted(lengths)}")
        return columns, lengths.pop() if lengths else 0
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        if not data:
            raise InputError("rows", "the input has no rows")
        for row, record in enumerate(data):
            if not isinstance(record, Mapping):
                raise InputError("payload", f"row {row} is not an object of column values")
        present = set().union(*(record.keys() for record in data))
        missing = [n for n in names if n not in present]
        if missing:
            raise InputError(missing[0], f"missing column (missing: {', '.join(missing)})")
        # A key absent from some records is a missing value there, as in MLflow's dataframe_records.
        return {n: [record.get(n) for record in data] for n in names}, len(data)
    raise InputError("payload", f"expected a DataFrame, a list of row objects or a dict of columns, not {type(data)}")


def coerce_columns(data: Any, signature: Mapping, *, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Validate `data` (DataFrame, list of row dicts, or dict of columns) against `signature`.

    Returns column name -> coerced numpy array, in signature order. Raises InputError.
    """
    names = [spec["name"] for spec in signature["inputs"]]
    raw, n_rows = _raw_columns(data, names)
    if n_rows == 0:
        raise InputError("rows", "the input has no rows")
    if max_rows is not None and n_rows > max_rows:
        raise InputError("rows", f"{n_rows} rows exceed the limit of {max_rows}")
    inputs = signature["inputs"]
    if all(spec["type"] == "number" for spec in inputs) and all(
        isinstance(v, list) or (isinstance(v, np.ndarray) and v.dtype.kind in "fiub") for v in raw.values()
    ):
        # All-number lists (a JSON request's usual shape) and numeric arrays (a binary V2 request's, or a
        # DataFrame's) convert in one numpy call instead of one per column (the same conversion `_to_float` tries
        # first). Anything else, or a required value that is missing, goes through the column by column path,
        # which names the column and row at fault.
        try:
            matrix = np.array([raw[name] for name in names], dtype=np.float64)
        except (TypeError, ValueError):
            matrix = None
        if matrix is not None and matrix.shape == (len(names), n_rows):
            required = [index for index, spec in enumerate(inputs) if not spec.get("nullable", False)]
            if not np.isnan(matrix if len(required) == len(names) else matrix[required]).any():
                return dict(zip(names, matrix, strict=True))
    return {spec["name"]: _coerce(spec, raw[spec["name"]]) for spec in inputs}


def validate_input(df: Any, signature: Mapping, *, max_rows: int | None = None) -> pd.DataFrame:
    """Coerce `df` to the signature: exactly its columns, in order, with checked types. Extra columns are dropped."""
    # Copied, so that the returned frame never shares memory with the caller's frame.
    return pd.DataFrame(coerce_columns(df, signature, max_rows=max_rows))


# ------------------------------------------------------------------------------------------- comparison

# A column of the old type can be fed to a model expecting the new type without losing meaning.
_WIDENINGS = {("integer", "number"), ("boolean", "integer"), ("boolean", "number"), ("categorical", "text")}


def signature_diff(old: Mapping, new: Mapping) -> dict:
    """What changed between two signatures: inputs added, removed, changed (type or nullability), and the output."""
    old_inputs = {spec["name"]: spec for spec in old["inputs"]}
    new_inputs = {spec["name"]: spec for spec in new["inputs"]}
    changed = [
        {
            "name": name,
            "old": {"type": old_inputs[name]["type"], "nullable": bool(old_inputs[name].get("nullable"))},
            "new": {"type": spec["type"], "nullable": bool(spec.get("nullable"))},
        }
        for name, spec in new_inputs.items()
        if name in old_inputs
        and (
            spec["type"] != old_inputs[name]["type"]
            or bool(spec.get("nullable")) != bool(old_inputs[name].get("nullable"))
        )
    ]
    output_changed = dict(old["outputs"]) != dict(new["outputs"])
    return {
        "added": [name for name in new_inputs if name not in old_inputs],
        "removed": [name for name in old_inputs if name not in new_inputs],
        "changed": changed,
        "output": {"old": dict(old["outputs"]), "new": dict(new["outputs"])} if output_changed else None,
    }


def signatures_compatible(old: Mapping, new: Mapping) -> bool:
    """True when every request valid for `old` is valid for `new` and both give the same kind of output."""
    if old["outputs"]["type"] != new["outputs"]["type"]:
        return False
    old_inputs = {spec["name"]: spec for spec in old["inputs"]}
    for spec in new["inputs"]:
        previous = old_inputs.get(spec["name"])
        if previous is None:
            return False
        if previous["type"] != spec["type"] and (previous["type"], spec["type"]) not in _WIDENINGS:
            return False
        if previous.get("nullable") and not spec.get("nullable"):
            return False
    return True


# ------------------------------------------------------------------------------------- request payloads

_V2_TYPES = {
    "BOOL": "bool",
    "UINT8": "int",
    "UINT16": "int",
    "UINT32": "int",
    "UINT64": "int",
    "INT8": "int",
    "INT16": "int",
    "INT32": "int",
    "INT64": "int",
    "FP16": "float",
    "FP32": "float",
    "FP64": "float",
    "BYTES": "bytes",
}


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        raise InputError("payload", "tensor data must be a list")
    if data and isinstance(data[0], list):
        return [value for item in data for value in _flatten(item)]
    return data


def _records_to_columns(records: list, columns: Sequence[str] | None, field: str) -> dict[str, list]:
    if all(isinstance(record, Mapping) for record in records):
        names = list(dict.fromkeys(key for record in records for key in record))
        return {name: [record.get(name) for record in records] for name in names}
    if all(isinstance(record, list) for record in records):
        if columns is None:
            raise InputError(field, "rows given as lists need column names")
        for row, record in enumerate(records):
            if len(record) != len(columns):
                raise InputError(field, f"row {row} has {len(record)} values for {len(columns)} columns")
        return dict(zip(columns, map(list, zip(*records, strict=True)), strict=True))
    raise InputError(field, "rows must all be objects or all be lists")


def _v2_to_columns(tensors: list, columns: Sequence[str] | None) -> dict[str, list | np.ndarray]:
    result: dict[str, list | np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or datatype not in _V2_TYPES:
            raise InputError("inputs", f"input {index} needs a name and a known datatype, got {datatype!r}")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InputError(name, f"bad shape {shape!r}")
        data = tensor.get("data")
        # A binary input (serving.binary) arrives decoded: a flat array of numbers, or a list of str.
        values = data if isinstance(data, np.ndarray) else _flatten(data)
        if math.prod(shape) != len(values):
            raise InputError(name, f"shape {shape} does not match {len(values)} values")
        if _V2_TYPES[datatype] == "bytes":
            values = [v.decode() if isinstance(v, bytes) else v for v in values]
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            result[name] = values
        elif len(shape) == 2 and columns is not None and shape[1] == len(columns):
            # One [rows, features] tensor: its columns are the signature's inputs, in order.
            width = shape[1]
            for position, column in enumerate(columns):
                # Arrays are made contiguous: a strided view would reach the event encoder as a string.
                column_values = values[position::width]
                result[column] = (
                    np.ascontiguousarray(column_values) if isinstance(column_values, np.ndarray) else column_values
                )
        else:
            raise InputError(name, f"shape {shape}: send one 1-D input per column")
    return result


def payload_to_columns(payload: Any, *, columns: Sequence[str] | None = None) -> dict[str, list | np.ndarray]:
    """Column name -> values from an MLflow `/invocations` body or a KServe V2 infer request.

    Accepted: `dataframe_split`, `dataframe_records`, `instances` (row objects, or row lists with `columns`),
    MLflow `inputs` (dict of columns or rows) and V2 `inputs` tensors (`name`, `shape`, `datatype`, `data`).
    `columns` names the positional values of row lists and 2-D tensors (the signature's input order).
    """
    if not isinstance(payload, Mapping):
        raise InputError("payload", "the request body must be a JSON object")
    keys = [key for key in ("dataframe_split", "dataframe_records", "instances", "inputs") if key in payload]
    if len(keys) != 1:
        raise InputError("payload", "expected exactly one of dataframe_split, dataframe_records, instances or inputs")
    key = keys[0]
    body = payload[key]
    if key == "dataframe_split":
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            raise InputError(key, "needs 'columns' and 'data' lists")
        names = body.get("columns", columns)
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise InputError(key, "'columns' must be a list of names")
        return _records_to_columns(body["data"], names, key)
    if key == "inputs" and isinstance(body, Mapping):
        out: dict[str, list] = {}
        for name, values in body.items():
            out[name] = _flatten(values) if isinstance(values, list) else [values]
        return out
    if not isinstance(body, list):
        raise InputError(key, "must be a list")
    is_v2 = key == "inputs" and body and all(isinstance(t, Mapping) and "datatype" in t for t in body)
    if is_v2:
        return _v2_to_columns(body, columns)
    return _records_to_columns(body, columns, key)


def rows_to_frame(payload: Any, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A DataFrame from a request body (see `payload_to_columns`); raises InputError when it is malformed."""
    data = payload_to_columns(payload, columns=columns)
    lengths = {len(values) for values in data.values()}
    if len(lengths) > 1:
        raise InputError("payload", f"columns have different lengths: {sorted(lengths)}")
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in data.items()}).infer_objects()
