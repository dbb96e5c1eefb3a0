"""The Django-free dataset engine: file checks, schema, profile, validation and splits. No database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.datasets.demo import DEMO_DATASETS, demo_csv_bytes, demo_frame
from worker.datasets.formats import CSV, PARQUET, FileFormatError, format_for_name, inspect_file, read_table
from worker.datasets.pipeline import profile_file
from worker.datasets.profile import describe_table, histogram, sorted_quantiles
from worker.datasets.splits import SplitError, indices_from_bytes, indices_to_bytes, split_indices
from worker.datasets.validation import RulesError, parse_rules, validate

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def parquet_bytes(tmp_path: Path, frame: pd.DataFrame) -> bytes:
    path = tmp_path / "frame.parquet"
    frame.to_parquet(path, index=False)
    return path.read_bytes()


# File checks


def test_a_good_csv_is_inspected_without_type_inference(tmp_path: Path) -> None:
    info = inspect_file(write(tmp_path, "a.csv", b"x,y,label\n1,2.5,a\n3,,b\n"), CSV)
    assert (info.format, info.columns, info.row_count) == (CSV, ["x", "y", "label"], 2)


def test_quoted_newlines_and_a_bom_are_fine(tmp_path: Path) -> None:
    info = inspect_file(write(tmp_path, "a.csv", b'\xef\xbb\xbfid,text\n1,"two\nlines"\n2,plain\n'), CSV)
    assert info.columns == ["id", "text"] and info.row_count == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \n\n", "the file is empty"),
        (b"a,b,c\n", "header but no data rows"),
        (b"a,b,c\n1,2,3\n4,5\n", "line 3 has 2 fields but the header has 3"),
        (b"a,b,c\n1,2,3\n4,5,6,7\n", "line 3 has 4 fields but the header has 3"),
        (b"a,b\n1,caf\xe9\n", "line 2 is not UTF-8 text (byte 0xe9 at position 6)"),
        (b"a,\xff\n1,2\n", "line 1 is not UTF-8 text"),
        (b"a,b,a\n1,2,3\n", "duplicate column names: 'a'"),
        (b",a,b\n0,1,2\n", "column 1 has no name"),
        (PNG, "named .csv but its content is a PNG image"),
        (b"PK\x03\x04rest-of-a-zip", "a ZIP archive"),
        (b"PAR1\x00\x00", "rename it to .parquet"),
        (b"id\x00name\n", "binary data"),
    ],
)
def test_bad_csv_is_refused_naming_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(FileFormatError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        inspect_file(write(tmp_path, "bad.csv", content), CSV)


def test_parquet_is_inspected_from_its_footer(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    info = inspect_file(write(tmp_path, "a.parquet", parquet_bytes(tmp_path, frame)), PARQUET)
    assert info.columns == ["a", "b"] and info.row_count == 3


def test_bad_parquet_is_refused(tmp_path: Path) -> None:
    good = parquet_bytes(tmp_path, pd.DataFrame({"a": range(100)}))
    with pytest.raises(FileFormatError, match="corrupt or truncated"):
        inspect_file(write(tmp_path, "cut.parquet", good[: len(good) // 2]), PARQUET)
    with pytest.raises(FileFormatError, match="corrupt or truncated"):
        inspect_file(write(tmp_path, "junk.parquet", b"PAR1" + b"\x07" * 200 + b"PAR1"), PARQUET)
    with pytest.raises(FileFormatError, match=r"named \.parquet but its content is text \(it looks like CSV\)"):
        inspect_file(write(tmp_path, "csv.parquet", b"a,b\n1,2\n"), PARQUET)
    with pytest.raises(FileFormatError, match="a PNG image, not Parquet"):
        inspect_file(write(tmp_path, "png.parquet", PNG), PARQUET)
    empty = parquet_bytes(tmp_path, pd.DataFrame({"a": pd.Series([], dtype="int64")}))
    with pytest.raises(FileFormatError, match="columns but no rows"):
        inspect_file(write(tmp_path, "empty.parquet", empty), PARQUET)
    nested = pa.table({"a": pa.array([[1, 2], [3]])})
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(FileFormatError, match=r"unsupported column types: 'a' \(list<element: int64>\)"):
        inspect_file(tmp_path / "nested.parquet", PARQUET)


@pytest.mark.parametrize(
    ("name", "expected"), [("a.csv", CSV), ("A.CSV", CSV), ("x.parquet", PARQUET), ("x.pq", PARQUET)]
)
def test_format_follows_the_extension(name: str, expected: str) -> None:
    assert format_for_name(name) == expected


@pytest.mark.parametrize("name", ["data.xlsx", "data.json", "data", "data.csv.gz"])
def test_other_extensions_are_refused(name: str) -> None:
    with pytest.raises(FileFormatError, match="unsupported file type"):
        format_for_name(name)


# Schema and profile


def mixed_frame(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.normal(50, 10, rows),
            "count": rng.integers(0, 5, rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
            "flag": rng.random(rows) < 0.3,
            "when": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "comment": [f"free text number {i}" for i in range(rows)],
        }
    )
    frame.loc[::10, "amount"] = np.nan
    return frame


def test_schema_types_in_the_users_words(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", mixed_frame().to_csv(index=False).encode())
    schema, _ = describe_table(read_table(path, CSV))
    types = {c["name"]: (c["type"], c["nullable"]) for c in schema["columns"]}
    assert types == {
        "amount": ("numeric", True),
        "count": ("integer", False),
        "colour": ("categorical", False),
        "flag": ("boolean", False),
        "when": ("datetime", False),
        "comment": ("text", False),
    }


def test_numeric_profile_matches_numpy_and_pandas(tmp_path: Path) -> None:
    frame = mixed_frame()
    path = write(tmp_path, "m.csv", frame.to_csv(index=False).encode())
    _, profile = describe_table(read_table(path, CSV))
    amount = profile["columns"]["amount"]
    expected = pd.read_csv(path)["amount"]
    assert amount["count"] == expected.count() == 900
    assert amount["nulls"] == 100 and amount["null_rate"] == pytest.approx(0.1)
    assert amount["mean"] == pytest.approx(expected.mean())
    assert amount["std"] == pytest.approx(expected.std())
    assert (amount["min"], amount["max"]) == (pytest.approx(expected.min()), pytest.approx(expected.max()))
    for name, q in {"p1": 0.01, "p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}.items():
        assert amount["quantiles"][name] == pytest.approx(expected.quantile(q)), name
    histogram = amount["histogram"]
    assert len(histogram["counts"]) == 30 and len(histogram["edges"]) == 31
    assert sum(histogram["counts"]) == 900
    assert histogram["edges"][0] == pytest.approx(expected.min()) and histogram["edges"][-1] == pytest.approx(
        expected.max()
    )


def test_small_integer_ranges_get_one_bin_per_value(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", mixed_frame().to_csv(index=False).encode())
    _, profile = describe_table(read_table(path, CSV))
    histogram = profile["columns"]["count"]["histogram"]
    assert histogram["edges"] == [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5]
    assert sum(histogram["counts"]) == 1000


def test_categorical_profile_keeps_top_20_and_counts_the_rest(tmp_path: Path) -> None:
    values = [f"c{i:02d}" for i in range(25) for _ in range(25 - i)]
    path = write(tmp_path, "c.csv", ("cat\n" + "\n".join(values) + "\n").encode())
    _, profile = describe_table(read_table(path, CSV))
    cat = profile["columns"]["cat"]
    assert cat["type"] == "categorical" and cat["distinct"] == 25
    assert cat["top"][0] == {"value": "c00", "count": 25}
    assert len(cat["top"]) == 20
    assert cat["other_count"] == sum(range(1, 6))


def test_boolean_datetime_and_text_profiles(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", mixed_frame(rows=100).to_csv(index=False).encode())
    _, profile = describe_table(read_table(path, CSV))
    flag, when, comment = (profile["columns"][n] for n in ("flag", "when", "comment"))
    assert {item["value"] for item in flag["top"]} == {True, False} and flag["other_count"] == 0
    assert when["min"] == "2024-01-01T00:00:00" and when["max"] == "2024-01-05T03:00:00"
    assert comment["length_min"] == len("free text number 0") and comment["length_max"] == len("free text number 99")


def test_profile_is_strict_json_even_with_infinity_and_empty_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", b"x,empty,y\ninf,,1\n-inf,,2\n1.5,,3\n")
    schema, profile = describe_table(read_table(path, CSV))
    text = json.dumps(profile, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    assert profile["columns"]["x"]["infinite"] == 2 and profile["columns"]["x"]["mean"] == 1.5
    assert profile["columns"]["empty"]["nulls"] == 3
    assert {c["name"]: c["type"] for c in schema["columns"]}["empty"] == "text"


def test_duplicate_rows_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", b"a,b\n1,x\n1,x\n2,x\n1,y\n1,x\n")
    _, profile = describe_table(read_table(path, CSV))
    assert profile["duplicate_rows"] == 2 and profile["duplicate_rate"] == pytest.approx(0.4)


def test_parquet_and_csv_of_the_same_data_profile_alike(tmp_path: Path) -> None:
    frame = mixed_frame(rows=200).drop(columns=["when"])
    from_csv = describe_table(read_table(write(tmp_path, "a.csv", frame.to_csv(index=False).encode()), CSV))
    from_parquet = describe_table(read_table(write(tmp_path, "a.parquet", parquet_bytes(tmp_path, frame)), PARQUET))
    strip = [{k: v for k, v in c.items() if k != "arrow_type"} for c in from_csv[0]["columns"]]
    assert strip == [{k: v for k, v in c.items() if k != "arrow_type"} for c in from_parquet[0]["columns"]]
    assert from_csv[1]["columns"]["amount"]["mean"] == pytest.approx(from_parquet[1]["columns"]["amount"]["mean"])


def test_dictionary_encoded_parquet_columns_are_decoded(tmp_path: Path) -> None:
    frame = pd.DataFrame({"colour": pd.Categorical(["red", "blue", "red"])})
    table = read_table(write(tmp_path, "c.parquet", parquet_bytes(tmp_path, frame)), PARQUET)
    assert table.schema.field("colour").type == pa.string()


# Rules and validation


def test_rules_are_checked_and_canonicalised() -> None:
    rules = parse_rules({"columns": {"age": {"min": 0, "max": 120, "max_null_rate": 0.05}}, "target": "label"})
    assert rules == {
        "target": "label",
        "columns": {"age": {"min": 0, "max": 120, "max_null_rate": 0.05, "blocking": False}},
    }
    assert parse_rules(None) == {} and parse_rules({}) == {}


@pytest.mark.parametrize(
    ("rules", "path"),
    [
        ([], ""),
        ({"colums": {}}, "colums"),
        ({"columns": []}, "columns"),
        ({"columns": {"a": {"minimum": 1}}}, "columns.a.minimum"),
        ({"columns": {"a": {"min": "zero"}}}, "columns.a.min"),
        ({"columns": {"a": {"min": 5, "max": 1}}}, "columns.a.min"),
        ({"columns": {"a": {"max_null_rate": 1.5}}}, "columns.a.max_null_rate"),
        ({"columns": {"a": {"allowed": []}}}, "columns.a.allowed"),
        ({"columns": {"a": {"allowed": [{"x": 1}]}}}, "columns.a.allowed"),
        ({"columns": {"a": {"blocking": "yes"}}}, "columns.a.blocking"),
        ({"target": ""}, "target"),
        ({"max_duplicate_rate": -0.1}, "max_duplicate_rate"),
    ],
)
def test_malformed_rules_say_where(rules: object, path: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(rules)
    assert caught.value.path == path


def run_validation(tmp_path: Path, content: bytes, rules: dict, parent_schema: dict | None = None) -> dict:
    table = read_table(write(tmp_path, "v.csv", content), CSV)
    schema, profile = describe_table(table)
    return validate(table, schema, profile, parse_rules(rules), parent_schema=parent_schema, parent_label="v1")


def by_check(report: dict) -> dict[tuple[str, str | None], dict]:
    return {(c["check"], c["column"]): c for c in report["checks"]}


def test_column_rules_pass_and_fail(tmp_path: Path) -> None:
    content = b"age,colour,label\n10,red,a\n200,blue,b\n,green,a\n-5,purple,b\n"
    rules = {
        "columns": {
            "age": {"min": 0, "max": 120, "max_null_rate": 0.1, "blocking": True},
            "colour": {"allowed": ["red", "green", "blue"]},
        },
        "target": "label",
    }
    report = run_validation(tmp_path, content, rules)
    checks = by_check(report)
    assert checks[("column.min", "age")]["status"] == "fail"
    assert checks[("column.min", "age")]["message"] == "1 values below 0."
    assert checks[("column.max", "age")]["message"] == "1 values above 120."
    assert checks[("column.max_null_rate", "age")]["status"] == "fail"
    assert "25.00%" in checks[("column.max_null_rate", "age")]["message"]
    allowed = checks[("column.allowed", "colour")]
    assert allowed["status"] == "fail" and "'purple'" in allowed["message"] and allowed["blocking"] is False
    assert checks[("target", "label")]["status"] == "pass"
    assert report["status"] == "fail" and report["blocking_failed"] is True
    assert report["summary"]["fail"] == 4


def test_non_blocking_failures_do_not_block(tmp_path: Path) -> None:
    report = run_validation(tmp_path, b"age\n-1\n5\n", {"columns": {"age": {"min": 0}}})
    assert report["status"] == "fail" and report["blocking_failed"] is False


def test_missing_target_blocks_and_missing_rule_column_fails(tmp_path: Path) -> None:
    report = run_validation(
        tmp_path, b"a\n1\n", {"target": "label", "columns": {"ghost": {"min": 0, "blocking": True}}}
    )
    checks = by_check(report)
    assert checks[("target", "label")]["status"] == "fail" and checks[("target", "label")]["blocking"]
    assert checks[("column.present", "ghost")]["status"] == "fail"
    assert report["blocking_failed"] is True


def test_range_rules_on_a_text_column_fail_with_a_reason(tmp_path: Path) -> None:
    report = run_validation(tmp_path, b"colour\nred\nblue\n", {"columns": {"colour": {"min": 0}}})
    assert (
        by_check(report)[("column.min", "colour")]["message"]
        == "A min rule needs a numeric column; 'colour' is categorical."
    )


def test_duplicates_warn_by_default_and_fail_over_the_limit(tmp_path: Path) -> None:
    content = b"a\n1\n1\n2\n3\n"
    assert by_check(run_validation(tmp_path, content, {}))[("duplicates", None)]["status"] == "warn"
    over = by_check(run_validation(tmp_path, content, {"max_duplicate_rate": 0.1}))[("duplicates", None)]
    assert over["status"] == "fail" and "the limit is 10.00%" in over["message"]
    assert by_check(run_validation(tmp_path, b"a\n1\n2\n", {}))[("duplicates", None)]["status"] == "pass"


def test_schema_is_compared_with_the_parent(tmp_path: Path) -> None:
    parent = {
        "columns": [
            {"name": "a", "type": "integer", "nullable": False},
            {"name": "gone", "type": "categorical", "nullable": False},
        ]
    }
    report = run_validation(tmp_path, b"a,new\nx,1\n", {}, parent_schema=parent)
    checks = by_check(report)
    assert checks[("schema.columns_added", None)]["status"] == "warn"
    assert checks[("schema.columns_removed", None)]["message"] == "Columns removed since v1: 'gone'."
    assert (
        checks[("schema.type_changed", "a")]["message"]
        == "Column 'a' changed type from integer to categorical since v1."
    )
    same = run_validation(tmp_path, b"a,gone\n1,t\n", {}, parent_schema=parent)
    assert by_check(same)[("schema", None)]["status"] == "pass"


def test_pipeline_reports_progress_and_timings(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", mixed_frame(rows=50).to_csv(index=False).encode())
    seen: list[tuple[float, str]] = []
    result = profile_file(path, CSV, rules={}, progress=lambda f, m: seen.append((f, m)))
    assert result.row_count == 50 and result.column_count == 6
    assert set(result.timings) == {"read", "profile", "validate"}
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[0][1].startswith("read 50 rows × 6 columns")


# Splits


def test_split_is_deterministic_and_complete() -> None:
    train, test = split_indices(1000, test_size=0.2, seed=7)
    again_train, again_test = split_indices(1000, test_size=0.2, seed=7)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert len(test) == 200 and len(train) == 800
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))
    assert list(test) == sorted(test)
    assert not np.array_equal(split_indices(1000, test_size=0.2, seed=8)[1], test)


def test_stratified_split_keeps_class_shares() -> None:
    labels = np.array(["a"] * 700 + ["b"] * 250 + ["c"] * 49 + ["lonely"])
    train, test = split_indices(len(labels), test_size=0.2, seed=1, strata=labels)
    assert len(test) == 200
    counts = pd.Series(labels[test]).value_counts().to_dict()
    assert counts["a"] == 140 and counts["b"] == 50 and 9 <= counts["c"] <= 10
    assert "lonely" not in counts, "a class with one row stays in training"


def test_stratified_split_handles_missing_labels() -> None:
    labels = [None, "a", "a", None, "b", "b", "a", None, "b", "a"]
    train, test = split_indices(10, test_size=0.3, seed=0, strata=labels)
    assert len(test) == 3 and len(train) == 7


@pytest.mark.parametrize(("rows", "size"), [(1, 0.2), (10, 0.0), (10, 1.0), (10, -0.5)])
def test_impossible_splits_are_refused(rows: int, size: float) -> None:
    with pytest.raises(SplitError):
        split_indices(rows, test_size=size, seed=0)


def test_indices_round_trip_without_pickle() -> None:
    indices = np.array([3, 1, 4, 1_000_000_000_000])
    data = indices_to_bytes(indices)
    assert data.startswith(b"\x93NUMPY")
    assert np.array_equal(indices_from_bytes(data), indices)


# Demo data


@pytest.mark.parametrize("name", list(DEMO_DATASETS))
def test_demo_datasets_have_a_target_and_stable_bytes(name: str) -> None:
    frame = demo_frame(name)
    assert frame.columns[-1] == "target"
    assert demo_csv_bytes(name) == demo_csv_bytes(name)
    if name in {"iris", "wine", "breast_cancer"}:
        assert frame["target"].map(type).eq(str).all()
    if name == "iris":
        assert set(frame["target"]) == {"setosa", "versicolor", "virginica"}


@pytest.mark.parametrize(("low", "high"), [(20, 69), (0, 1000), (-7, 7), (5, 5)])
def test_integer_bins_hold_equally_many_values(low: int, high: int) -> None:
    values = np.arange(low, high + 1, dtype=float)
    result = histogram(values, integer=True)
    edges, counts = np.array(result["edges"]), result["counts"]
    assert len(counts) <= 30 and sum(counts) == values.size
    assert edges[0] == low - 0.5 and edges[-1] >= high + 0.5
    widths = np.diff(edges)
    assert np.all(widths == widths[0]) and widths[0] == int(widths[0]), "whole numbers of values per bin"
    assert all(count == widths[0] for count in counts[:-1]), "each full bin holds the same number of values"


def test_duplicate_rows_match_pandas_on_mixed_data_with_nulls(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = 5000
    frame = pd.DataFrame(
        {
            "f": rng.choice([0.5, -0.0, 0.0, np.nan, 2.25], rows),
            "i": pd.array(rng.choice([1, 2, None], rows), dtype="Int64"),
            "s": rng.choice(["a", "b", None], rows),
            "b": rng.choice([True, False], rows),
            "t": rng.choice(pd.to_datetime(["2024-01-01", "2024-06-01"]), rows),
        }
    )
    path = write(tmp_path, "d.parquet", parquet_bytes(tmp_path, frame))
    table = read_table(path, PARQUET)
    _, profile = describe_table(table)
    expected = int(table.to_pandas().assign(f=lambda df: df["f"] + 0.0).duplicated().sum())
    assert profile["duplicate_rows"] == expected > 0


def test_sorted_quantiles_and_histograms_agree_with_numpy() -> None:
    values = np.sort(np.random.default_rng(5).normal(size=10_001))
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    assert sorted_quantiles(values, qs) == pytest.approx(np.quantile(values, qs))
    assert histogram(values, integer=False, presorted=True) == histogram(values, integer=False)
    integers = np.sort(np.random.default_rng(5).integers(0, 500, 10_000).astype(float))
    assert histogram(integers, integer=True, presorted=True) == histogram(integers, integer=True)
