"""Helpers shared by the datasets tests."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from apps.core.artifacts import get_artifact_store


def stored_files(artifact_root: Path) -> list[Path]:
    """Files in the artifact store, and anything left in its temporary directory."""
    return sorted(p for p in artifact_root.rglob("*") if p.is_file())


def tamper(sha256: str) -> None:
    path = get_artifact_store().verified_path(sha256)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"setosa", b"SETOSA", 1) + b"\n")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def parquet_bytes(frame: pd.DataFrame, tmp_path: Path) -> bytes:
    path = tmp_path / "frame.parquet"
    frame.to_parquet(path, index=False)
    return path.read_bytes()
