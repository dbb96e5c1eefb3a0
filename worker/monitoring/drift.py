"""Data and prediction drift per column: Evidently's default tests, computed from a stored reference profile.

`reference_profile` summarises a reference once (sorted finite values, their standard deviation and
unique counts for a numeric column; category counts for a categorical one); `drift_report` compares a
window against it. The profile is stored (`to_bytes`, npz without pickle), so a window never reloads the
reference. Exact answers need the whole sorted reference (the Wasserstein distance and the KS statistic
depend on every value), so numeric columns keep it; the work per window is a sort of the window and a
linear merge with the stored values, and for everything else a few binary searches in the stored arrays.
Columns are handled one after the other, each in a handful of whole-array numpy passes: the Python loop
costs microseconds per column, and the columns' non-missing values differ in number, so stacking them into
one matrix would only add padding.

Test choice, as Evidently's `get_stattest` default (unique values counted over reference and current
together, missing values and ±inf dropped first, "reference rows" meaning its non-missing values):

- reference ≤ 1,000 values: numeric with > 5 unique values: two-sample Kolmogorov-Smirnov; otherwise
  (categorical, or numeric with ≤ 5 unique) chi-square, or the two-proportion z-test when ≤ 2 unique.
  Drift when p < 0.05.
- reference > 1,000 values: numeric with > 5 unique values: Wasserstein distance / reference standard
  deviation (population, floored at 0.001); otherwise Jensen-Shannon distance (natural log). Drift when
  the value ≥ 0.1.
- PSI for every column (drift when ≥ 0.1), reported beside the test; it counts in the drift share only
  for a column whose test is set to "psi".

Binning for Jensen-Shannon and PSI follows Evidently: a numeric column with more than 20 unique reference
values is cut into equal-width bins over the range of reference and current together, as many as numpy's
Sturges rule gives for their combined size; any other column is counted per value over the union of
values. PSI replaces empty bins by min(non-empty share) / 10^6 if that minimum is ≤ 0.0001, else by
0.0001 (per side); Jensen-Shannon needs no such fill.

Where this engine differs from Evidently, on purpose:

- chi-square is the two-sample test of homogeneity on the 2×k contingency table (reference counts,
  current counts; `scipy.stats.chi2_contingency`, no Yates correction, k-1 degrees of freedom). Evidently
  runs a goodness-of-fit test that takes the reference frequencies as exact, ignoring the reference's own
  sampling noise, so it flags undrifted columns as the samples grow. No continuity correction: for a
  binary column the uncorrected test is the z-test squared, so both give the same p-value.
- a column whose test cannot run (no values on one side, a test that does not fit the column) is reported
  with `reason` and no statistic, and left out of the drift share, where Evidently raises. The share is
  over the columns tested; with none tested it is None, not NaN.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)

SMALL_REFERENCE = 1000  # at most this many reference values: p-value tests, else distances
FEW_UNIQUE = 5  # a numeric column with at most this many unique values is tested as categorical
BINARY = 2  # at most this many unique values: z-test instead of chi-square
HISTOGRAM_MIN_UNIQUE = 20  # above this many unique reference values a numeric column is binned
STD_FLOOR = 0.001

P_VALUE_TESTS = ("ks", "chisquare", "z")
DISTANCE_TESTS = ("wasserstein", "jensenshannon", "psi")
TESTS = P_VALUE_TESTS + DISTANCE_TESTS
NUMERIC_ONLY_TESTS = ("ks", "wasserstein")
DEFAULT_THRESHOLDS = {"ks": 0.05, "chisquare": 0.05, "z": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1}


@dataclass(frozen=True)
class ColumnTest:
    """A per-column override: the test to run and/or its threshold (None keeps the default)."""

    test: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.test is not None and self.test not in TESTS:
            raise ValueError(f"test must be one of {', '.join(TESTS)}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError("threshold must be a finite number ≥ 0")


@dataclass(frozen=True)
class DriftOptions:
    drift_share: float = 0.5
    psi_threshold: float = DEFAULT_THRESHOLDS["psi"]
    columns: Mapping[str, ColumnTest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.drift_share <= 1:
            raise ValueError("drift_share must be in (0, 1]")
        if not (math.isfinite(self.psi_threshold) and self.psi_threshold >= 0):
            raise ValueError("psi_threshold must be a finite number ≥ 0")


@dataclass(frozen=True)
class ColumnProfile:
    """What a drift test needs from one reference column. Arrays are read-only and never pickled."""

    kind: str
    n_rows: int
    n_missing: int
    values: np.ndarray  # numeric: the finite values, sorted; categorical: empty
    categories: np.ndarray  # sorted unique values (numeric: only when ≤ HISTOGRAM_MIN_UNIQUE of them)
    counts: np.ndarray  # occurrences of each category
    n_unique: int
    std: float  # numeric: population standard deviation of the values
    integer: bool  # numeric values given as integers (numpy's bin rule differs for them)

    @property
    def n_values(self) -> int:
        return self.n_rows - self.n_missing


@dataclass(frozen=True)
class ReferenceProfile:
    columns: Mapping[str, ColumnProfile]

    def to_bytes(self) -> bytes:
        meta, arrays = {}, {}
        for index, (name, column) in enumerate(self.columns.items()):
            meta[name] = {
                "index": index,
                "kind": column.kind,
                "n_rows": column.n_rows,
                "n_missing": column.n_missing,
                "n_unique": column.n_unique,
                "std": column.std,
                "integer": column.integer,
            }
            for part in ("values", "categories", "counts"):
                arrays[f"{index}.{part}"] = getattr(column, part)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes().decode())
            columns = {}
            for name, info in meta.items():
                index = info.pop("index")
                parts = {part: _read_only(stored[f"{index}.{part}"]) for part in ("values", "categories", "counts")}
                columns[name] = ColumnProfile(**info, **parts)
        return cls(columns=columns)


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str
    test: str | None
    statistic: float | None  # a p-value for ks, chisquare and z; a distance for the others
    threshold: float | None
    drifted: bool | None
    psi: float | None
    psi_drifted: bool | None
    n_reference: int  # non-missing values
    n_current: int
    missing_share_reference: float | None  # None for an empty window
    missing_share_current: float | None
    n_unique: int | None  # over reference and current together
    reason: str | None = None  # why the column was not tested


@dataclass(frozen=True)
class DriftReport:
    columns: tuple[ColumnDrift, ...]
    n_tested: int
    n_drifted: int
    drift_share: float | None
    dataset_drift: bool | None
    drift_share_threshold: float

    def column(self, name: str) -> ColumnDrift:
        for column in self.columns:
            if column.column == name:
                return column
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _numeric_values(raw: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Finite values as float64, the count of missing ones (NaN, ±inf, None), and whether given as integers."""
    raw = np.asarray(raw)
    integer = raw.dtype.kind in "iu"
    try:
        values = raw.astype(np.float64) if raw.dtype.kind != "O" else np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("a numeric column holds a value that is not a number") from None
    finite = np.isfinite(values)
    return values[finite], int(values.size - np.count_nonzero(finite)), integer


def _categorical_values(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-missing values and the count of missing ones (None, NaN); objects are compared as strings."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        present = np.isfinite(raw)
        return raw[present], int(raw.size - np.count_nonzero(present))
    if raw.dtype.kind == "O":
        missing = np.frompyfunc(lambda v: v is None or v != v, 1, 1)(raw).astype(bool)
        return raw[~missing].astype(str), int(np.count_nonzero(missing))
    return raw, 0


def _column_profile(raw: np.ndarray, kind: str) -> ColumnProfile:
    if kind == NUMERIC:
        values, n_missing, integer = _numeric_values(raw)
        values = np.sort(values)
        is_new = np.empty(values.size, dtype=bool)
        is_new[:1] = True
        np.not_equal(values[1:], values[:-1], out=is_new[1:])
        n_unique = int(np.count_nonzero(is_new))
        if n_unique <= HISTOGRAM_MIN_UNIQUE:
            categories, counts = np.unique(values, return_counts=True)
        else:
            categories, counts = np.empty(0), np.empty(0, dtype=np.int64)
        std = float(np.std(values)) if values.size else 0.0
        return ColumnProfile(kind, int(np.size(raw)), n_missing, values, categories, counts, n_unique, std, integer)
    if kind == CATEGORICAL:
        values, n_missing = _categorical_values(raw)
        categories, counts = np.unique(values, return_counts=True)
        return ColumnProfile(
            kind, int(np.size(raw)), n_missing, np.empty(0), categories, counts, categories.size, 0.0, False
        )
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def reference_profile(columns: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> ReferenceProfile:
    """Summarise a reference once; `kinds` maps every column to "numeric" or "categorical"."""
    if set(columns) != set(kinds):
        raise ValueError("kinds must name exactly the columns given")
    profiles = {name: _column_profile(values, kinds[name]) for name, values in columns.items()}
    for profile in profiles.values():
        for array in (profile.values, profile.categories, profile.counts):
            _read_only(array)
    return ReferenceProfile(columns=profiles)


def _value_counts(categories: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the current values, sorted, found by binary search among the reference's categories.

    Only values the reference never had are sorted, so a window costs O(m log k), not a sort of m strings.
    """
    if categories.dtype.kind == "U" and current.dtype.kind != "U":
        current = current.astype(str)
    if categories.size == 0:
        return np.unique(current, return_counts=True)
    found = np.searchsorted(categories, current).clip(max=categories.size - 1)
    known = categories[found] == current
    known_counts = np.bincount(found[known], minlength=categories.size)
    new_values, new_counts = np.unique(current[~known], return_counts=True)
    values = np.concatenate((categories[known_counts > 0], new_values))
    counts = np.concatenate((known_counts[known_counts > 0], new_counts))
    order = np.argsort(values, kind="stable")
    return values[order], counts[order]


def _aligned_counts(reference: ColumnProfile, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts over the sorted union of their values (current given non-missing)."""
    categories = reference.categories
    current_categories, current_counts = _value_counts(categories, current)
    union = np.union1d(categories, current_categories)
    reference_counts = np.zeros(union.size, dtype=np.int64)
    current_aligned = np.zeros(union.size, dtype=np.int64)
    reference_counts[np.searchsorted(union, categories)] = reference.counts
    current_aligned[np.searchsorted(union, current_categories)] = current_counts
    return reference_counts, current_aligned


def _histogram_counts(
    reference: ColumnProfile, current_sorted: np.ndarray, current_integer: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Counts in numpy's Sturges bins over reference and current together, as `np.histogram` gives them."""
    first = min(reference.values[0], current_sorted[0])
    last = max(reference.values[-1], current_sorted[-1])
    integer = reference.integer and current_integer
    if first == last:
        first, last = first - 0.5, last + 0.5
        n_bins = 1
    else:
        width = (last - first) / (np.log2(reference.values.size + current_sorted.size) + 1.0)
        if integer and width < 1:
            width = 1
        n_bins = int(np.ceil((last - first) / width))
    edges = np.linspace(first, last, n_bins + 1, endpoint=True)

    def counts(sorted_values: np.ndarray) -> np.ndarray:
        cumulative = np.concatenate(
            (sorted_values.searchsorted(edges[:-1], "left"), sorted_values.searchsorted(edges[-1:], "right"))
        )
        return np.diff(cumulative)

    return counts(reference.values), counts(current_sorted)


@dataclass
class _Window:
    """One column of the current window; the counts several statistics share are computed once."""

    reference: ColumnProfile
    values: np.ndarray  # non-missing; sorted for a numeric column
    integer: bool  # numeric values given as integers

    @cached_property
    def aligned_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return _aligned_counts(self.reference, self.values)

    @cached_property
    def binned_shares(self) -> tuple[np.ndarray, np.ndarray]:
        if self.reference.kind == NUMERIC and self.reference.n_unique > HISTOGRAM_MIN_UNIQUE:
            reference_counts, current_counts = _histogram_counts(self.reference, self.values, self.integer)
        else:
            reference_counts, current_counts = self.aligned_counts
        return reference_counts / self.reference.n_values, current_counts / self.values.size

    @cached_property
    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """Numeric: reference and window values in one sorted array, and how many of the first i + 1 came
        from the reference. Both sides are sorted, so the stable sort of their concatenation is a single
        linear merge (timsort)."""
        both = np.concatenate((self.reference.values, self.values))
        order = np.argsort(both, kind="stable")
        return both[order], np.cumsum(order < self.reference.values.size)

    @cached_property
    def n_unique(self) -> int:
        """Unique values over reference and current together."""
        if self.reference.kind == CATEGORICAL:
            return int(self.aligned_counts[0].size)
        merged, _ = self.merged
        return 1 + int(np.count_nonzero(merged[1:] != merged[:-1]))


def _fill_empty(shares: np.ndarray) -> np.ndarray:
    smallest = shares[shares != 0].min()
    return np.where(shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, shares)


def _psi(window: _Window) -> float:
    reference_shares, current_shares = (_fill_empty(shares) for shares in window.binned_shares)
    return float(np.sum((reference_shares - current_shares) * np.log(reference_shares / current_shares)))


def _jensenshannon(window: _Window) -> float:
    return float(distance.jensenshannon(*window.binned_shares))


def _wasserstein_normed(window: _Window) -> float:
    """scipy's `wasserstein_distance` (the area between the two empirical CDFs), from the merged values.

    scipy counts, at each merged value, the values ≤ it on each side (a binary search); the running counts
    here differ only inside a run of equal values, where the step has zero width and adds nothing.
    """
    reference = window.reference
    n, m = reference.values.size, window.values.size
    merged, from_reference = window.merged
    from_current = np.arange(1, n + m) - from_reference[:-1]
    gaps = np.abs(from_reference[:-1] / n - from_current / m)
    return float(np.sum(np.multiply(gaps, np.diff(merged)))) / max(reference.std, STD_FLOOR)


def _z_test(window: _Window) -> float:
    """Two-proportion z-test of "first value in sorted order" against the rest, as Evidently's."""
    reference_counts, current_counts = window.aligned_counts
    if reference_counts.size == 1:
        return 1.0
    n1, n2 = int(reference_counts.sum()), int(current_counts.sum())
    p1 = float(n1 - reference_counts[0]) / n1
    p2 = float(n2 - current_counts[0]) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _chi_square(window: _Window) -> float:
    table = np.vstack(window.aligned_counts)
    if table.shape[1] == 1:
        return 1.0  # one value on both sides: nothing to compare
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _ks(window: _Window) -> float:
    return float(stats.ks_2samp(window.reference.values, window.values).pvalue)


STATISTICS = {
    "ks": _ks,
    "chisquare": _chi_square,
    "z": _z_test,
    "wasserstein": _wasserstein_normed,
    "jensenshannon": _jensenshannon,
    "psi": _psi,
}


def _default_test(reference: ColumnProfile, n_unique: int) -> str:
    numeric_many = reference.kind == NUMERIC and n_unique > FEW_UNIQUE
    if reference.n_values <= SMALL_REFERENCE:
        if numeric_many:
            return "ks"
        return "z" if n_unique <= BINARY else "chisquare"
    return "wasserstein" if numeric_many else "jensenshannon"


def _untested(name: str, reference: ColumnProfile, n_current: int, n_rows: int, reason: str) -> ColumnDrift:
    return ColumnDrift(
        column=name,
        kind=reference.kind,
        test=None,
        statistic=None,
        threshold=None,
        drifted=None,
        psi=None,
        psi_drifted=None,
        n_reference=reference.n_values,
        n_current=n_current,
        missing_share_reference=reference.n_missing / reference.n_rows if reference.n_rows else None,
        missing_share_current=(n_rows - n_current) / n_rows if n_rows else None,
        n_unique=None,
        reason=reason,
    )


def _column_drift(name: str, reference: ColumnProfile, raw: np.ndarray | None, options: DriftOptions) -> ColumnDrift:
    override = options.columns.get(name, ColumnTest())
    if override.test in NUMERIC_ONLY_TESTS and reference.kind != NUMERIC:
        raise ValueError(f"{name}: the {override.test} test needs a numeric column")
    if raw is None:
        return _untested(name, reference, 0, 0, "the column is absent from the current window")
    integer = False
    if reference.kind == NUMERIC:
        current, _, integer = _numeric_values(raw)
        current = np.sort(current)
    else:
        current, _ = _categorical_values(raw)
    n_rows = int(np.size(raw))
    if reference.n_values == 0:
        return _untested(name, reference, current.size, n_rows, "the reference has no values in this column")
    if n_rows == 0:
        return _untested(name, reference, 0, 0, "the current window is empty")
    if current.size == 0:
        return _untested(name, reference, 0, n_rows, "the current window has only missing values in this column")
    window = _Window(reference, current, integer)
    n_unique = window.n_unique
    test = override.test or _default_test(reference, n_unique)
    if test in ("chisquare", "z") and reference.kind == NUMERIC and reference.n_unique > HISTOGRAM_MIN_UNIQUE:
        raise ValueError(f"{name}: the {test} test needs a categorical column or one with few unique values")
    threshold = override.threshold if override.threshold is not None else DEFAULT_THRESHOLDS[test]
    statistic = STATISTICS[test](window)
    psi = statistic if test == "psi" else _psi(window)
    drifted = statistic < threshold if test in P_VALUE_TESTS else statistic >= threshold
    return ColumnDrift(
        column=name,
        kind=reference.kind,
        test=test,
        statistic=statistic,
        threshold=threshold,
        drifted=bool(drifted),
        psi=psi,
        psi_drifted=psi >= options.psi_threshold,
        n_reference=reference.n_values,
        n_current=int(current.size),
        missing_share_reference=reference.n_missing / reference.n_rows,
        missing_share_current=(n_rows - current.size) / n_rows,
        n_unique=n_unique,
    )


def drift_report(
    profile: ReferenceProfile, current_columns: Mapping[str, np.ndarray], options: DriftOptions | None = None
) -> DriftReport:
    """Compare a window with the reference, column by column, and decide dataset drift.

    Raises ValueError (naming the column) for an override that does not fit its column, or for an
    override naming a column the reference does not have.
    """
    options = options or DriftOptions()
    unknown = sorted(set(options.columns) - set(profile.columns))
    if unknown:
        raise ValueError(f"options name columns the reference does not have: {', '.join(unknown)}")
    columns = tuple(
        _column_drift(name, reference, current_columns.get(name), options)
        for name, reference in profile.columns.items()
    )
    tested = [column for column in columns if column.drifted is not None]
    n_drifted = sum(column.drifted for column in tested)
    share = n_drifted / len(tested) if tested else None
    return DriftReport(
        columns=columns,
        n_tested=len(tested),
        n_drifted=n_drifted,
        drift_share=share,
        dataset_drift=None if share is None else share >= options.drift_share,
        drift_share_threshold=options.drift_share,
    )


def prediction_columns(
    *, y_pred: np.ndarray, proba: np.ndarray | None = None, classes: tuple[object, ...] | None = None, task: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The model's outputs as columns for the same engine: prediction drift and per-class probability drift.

    A classifier's predicted label is categorical; a regressor's prediction is numeric; each class
    probability is a numeric column named `proba:<class>`.
    """
    if task not in ("classification", "regression"):
        raise ValueError("task must be classification or regression")
    columns = {"prediction": np.asarray(y_pred)}
    kinds = {"prediction": CATEGORICAL if task == "classification" else NUMERIC}
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        if classes is None or proba.ndim != 2 or proba.shape[1] != len(classes):
            raise ValueError("proba must be a 2-D array with one column per entry of classes")
        for index, label in enumerate(classes):
            columns[f"proba:{label}"] = proba[:, index]
            kinds[f"proba:{label}"] = NUMERIC
    return columns, kinds
