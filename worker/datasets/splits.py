"""Deterministic train/test splits by row index, optionally stratified."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


class SplitError(ValueError):
    pass


def split_indices(
    n_rows: int, *, test_size: float, seed: int, strata: Sequence[Any] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices; the same arguments always give the same split.

    With `strata` (one label per row), each class keeps its share in the test set: the test rows
    are allotted to classes by largest remainder, so the total is exact, and a class with a single
    row stays in training.
    """
    if not 0 < test_size < 1:
        raise SplitError(f"test_size must be between 0 and 1 (exclusive); got {test_size}")
    if n_rows < 2:
        raise SplitError(f"a split needs at least 2 rows; the dataset has {n_rows}")
    n_test = min(max(round(n_rows * test_size), 1), n_rows - 1)
    rng = np.random.default_rng(seed)
    if strata is None:
        test = rng.permutation(n_rows)[:n_test]
    else:
        codes, _ = pd.factorize(pd.Series(strata), sort=True, use_na_sentinel=False)
        if len(codes) != n_rows:
            raise SplitError(f"strata has {len(codes)} labels for {n_rows} rows")
        sizes = np.bincount(codes)
        quotas = sizes * (n_test / n_rows)
        allotted = np.floor(quotas).astype(np.int64)
        # Largest remainder first; classes with one row never give it to the test set.
        remainders = np.where(sizes > 1, quotas - allotted, -1.0)
        for code in np.argsort(-remainders, kind="stable")[: n_test - int(allotted.sum())]:
            allotted[code] += 1
        allotted = np.minimum(allotted, np.maximum(sizes - 1, 0))
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        test = np.concatenate(
            [
                rng.permutation(order[start : start + size])[:take]
                for start, size, take in zip(starts, sizes, allotted, strict=True)
            ]
        )
    test = np.sort(test).astype(np.int64)
    train = np.setdiff1d(np.arange(n_rows, dtype=np.int64), test, assume_unique=True)
    return train, test


def indices_to_bytes(indices: np.ndarray) -> bytes:
    """A sorted index array in NumPy's .npy format: compact, portable and loadable without pickle."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(indices, dtype=np.int64), allow_pickle=False)
    return buffer.getvalue()


def indices_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
