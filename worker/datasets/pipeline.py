"""The worker's job for one dataset version: read the file once, infer the schema, profile, validate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.datasets.formats import read_table
from worker.datasets.profile import Progress, describe_table
from worker.datasets.validation import validate

# Shares of the progress bar per phase, so the UI moves steadily through a long profile.
READ_SHARE, PROFILE_SHARE = 0.2, 0.7


@dataclass
class ProfileResult:
    schema: dict[str, Any]
    profile: dict[str, Any]
    report: dict[str, Any]
    row_count: int
    column_count: int
    timings: dict[str, float] = field(default_factory=dict)


def profile_file(
    path: Path,
    file_format: str,
    *,
    rules: dict[str, Any],
    parent_schema: dict[str, Any] | None = None,
    parent_label: str = "the previous version",
    progress: Progress | None = None,
) -> ProfileResult:
    def report(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, message)

    timings: dict[str, float] = {}
    started = time.perf_counter()
    table = read_table(path, file_format)
    timings["read"] = time.perf_counter() - started
    report(READ_SHARE, f"read {table.num_rows:,} rows × {table.num_columns} columns in {timings['read']:.2f} s")

    started = time.perf_counter()
    schema, profile = describe_table(
        table, lambda fraction, message: report(READ_SHARE + PROFILE_SHARE * fraction, message)
    )
    timings["profile"] = time.perf_counter() - started
    report(READ_SHARE + PROFILE_SHARE, f"profiled in {timings['profile']:.2f} s")

    started = time.perf_counter()
    validation = validate(table, schema, profile, rules, parent_schema=parent_schema, parent_label=parent_label)
    timings["validate"] = time.perf_counter() - started
    summary = validation["summary"]
    counts = f"{summary['pass']} passed, {summary['warn']} warnings, {summary['fail']} failed"
    report(1.0, f"validated in {timings['validate']:.2f} s: {counts}")
    return ProfileResult(
        schema=schema,
        profile=profile,
        report=validation,
        row_count=table.num_rows,
        column_count=table.num_columns,
        timings=timings,
    )
