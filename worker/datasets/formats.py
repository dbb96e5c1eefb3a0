"""Recognise and read dataset files (CSV, Parquet), refusing anything that is not a flat, well-formed table.

`inspect_file` is the cheap structural check an upload request runs before anything is stored: it
streams the file once without inferring types, so memory stays flat whatever the file size.
`read_table` is the full, typed read the profiler does on the worker.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

CSV = "csv"
PARQUET = "parquet"
EXTENSIONS = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET}
# pyarrow parses blocks in parallel and needs a whole row in one block: 4 MiB keeps both cores busy
# on a large file and still fits any sane row.
CSV_BLOCK_SIZE = 4 * 1024 * 1024
SNIFF_BYTES = 8192
# Signatures of files people upload by mistake, so the error can say what the file actually is.
MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Excel/Office file)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\xd0\xcf\x11\xe0", "an old-style Office document"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x93NUMPY", "a NumPy array"),
    *((b"\x80" + bytes([protocol]), "a Python pickle") for protocol in (2, 3, 4, 5)),
    (b"ARROW1", "an Arrow IPC file"),
    (b"PAR1", "Parquet"),
]


class FileFormatError(ValueError):
    """The file is not a table we can read. The message says what is wrong, in the user's words."""


@dataclass(frozen=True)
class FileInfo:
    format: str
    columns: list[str]
    row_count: int


def format_for_name(file_name: str) -> str:
    """The format a file name claims, from its extension; refuses extensions we do not read."""
    suffix = Path(file_name).suffix.lower()
    if suffix not in EXTENSIONS:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise FileFormatError(f"unsupported file type ({shown}); upload a .csv or .parquet file")
    return EXTENSIONS[suffix]


def sniff(head: bytes) -> str | None:
    """What the first bytes say the file is, or None for something that may be text."""
    for magic, label in MAGIC:
        if head.startswith(magic):
            return label
    if b"\x00" in head:
        return "binary data"
    return None


def inspect_file(path: Path, declared_format: str) -> FileInfo:
    """Check the file is what its name says and is a well-formed table; count its rows.

    Raises FileFormatError naming the problem: empty, header only, ragged rows, not UTF-8,
    duplicate or empty column names, a different file type than the name says, corrupt Parquet.
    """
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if not head.strip():
        raise FileFormatError("the file is empty")
    actual = sniff(head)
    if declared_format == PARQUET:
        if actual != "Parquet":
            what = actual or "text (it looks like CSV)"
            raise FileFormatError(f"the file is named .parquet but its content is {what}, not Parquet")
        return _inspect_parquet(path)
    if actual is not None:
        hint = "; rename it to .parquet" if actual == "Parquet" else ""
        raise FileFormatError(f"the file is named .csv but its content is {actual}, not CSV text{hint}")
    return _inspect_csv(path)


def _check_column_names(names: list[str]) -> None:
    empty = [str(i + 1) for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise FileFormatError(
            f"column {', '.join(empty)} has no name; every column needs a header "
            "(a file saved with a row index often has an unnamed first column)"
        )
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})
    if duplicates:
        raise FileFormatError(f"duplicate column names: {', '.join(repr(d) for d in duplicates)}")


def _not_utf8(line: int, raw: bytes, exc: UnicodeDecodeError) -> str:
    byte = raw[exc.start]
    return f"line {line} is not UTF-8 text (byte 0x{byte:02x} at position {exc.start + 1}); save the file as UTF-8"


def _csv_header(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        raw = handle.readline(CSV_BLOCK_SIZE)
    try:
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileFormatError(_not_utf8(1, raw, exc)) from None
    return next(csv.reader([line]), [])


def _inspect_csv(path: Path) -> FileInfo:
    names = _csv_header(path)
    if not names:
        raise FileFormatError("the file has no header row")
    _check_column_names(names)
    # Every column as a string: no type inference here (the worker does that), but pyarrow still
    # checks that each row has as many fields as the header and that all text is valid UTF-8.
    convert = pcsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=True)
    rows = 0
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=convert,
        )
        for batch in reader:
            rows += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise FileFormatError(_describe_csv_error(path, str(exc), len(names))) from None
    if rows == 0:
        raise FileFormatError("the file has a header but no data rows")
    return FileInfo(format=CSV, columns=names, row_count=rows)


def _describe_csv_error(path: Path, arrow_message: str, width: int) -> str:
    """Find the offending line to name it. Runs only for a bad file, so a second pass is fine."""
    if "UTF8" in arrow_message or "utf8" in arrow_message.lower():
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return _not_utf8(number, raw, exc)
        return "the file is not valid UTF-8 text; save it as UTF-8"
    if "Expected" in arrow_message and "columns" in arrow_message:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if len(row) != width:
                    return (
                        f"line {reader.line_num} has {len(row)} field{'s' if len(row) != 1 else ''} "
                        f"but the header has {width}; every row needs the same number of fields"
                    )
    return f"the file could not be read as CSV: {arrow_message[:200]}"


SUPPORTED_TYPES = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_boolean,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_timestamp,
    pa.types.is_date,
    pa.types.is_time,
    pa.types.is_null,
)


def _is_supported(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        return _is_supported(arrow_type.value_type)
    return any(check(arrow_type) for check in SUPPORTED_TYPES)


def _inspect_parquet(path: Path) -> FileInfo:
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        rows = parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise FileFormatError(f"the Parquet file is corrupt or truncated ({str(exc)[:160]})") from None
    names = list(schema.names)
    if not names:
        raise FileFormatError("the Parquet file has no columns")
    _check_column_names(names)
    unsupported = [f"{field.name!r} ({field.type})" for field in schema if not _is_supported(field.type)]
    if unsupported:
        raise FileFormatError(
            f"unsupported column types: {', '.join(unsupported[:5])}; "
            "only flat columns of numbers, text, booleans and dates are supported"
        )
    if rows == 0:
        raise FileFormatError("the Parquet file has columns but no rows")
    return FileInfo(format=PARQUET, columns=names, row_count=rows)


def read_table(path: Path, file_format: str, columns: list[str] | None = None) -> pa.Table:
    """The typed table, read once. Dictionary columns are decoded so every engine sees plain types."""
    if file_format == PARQUET:
        table = pq.read_table(path, columns=columns)
    else:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True, include_columns=columns),
        )
    for index, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(index, field.name, table.column(index).cast(field.type.value_type))
    return table
