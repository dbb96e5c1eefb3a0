"""Reference-vs-current histograms for the drift page: counts add up, both sides share the bins, odd columns work."""

from __future__ import annotations

import numpy as np

from worker.monitoring.drift import reference_profile
from worker.monitoring.histograms import MAX_CATEGORIES, NUMERIC_BINS, OTHER, column_histogram


def profile(values: dict, kinds: dict) -> object:
    return reference_profile({name: np.asarray(v) for name, v in values.items()}, kinds)


def test_numeric_bins_cover_both_sides_and_drop_missing() -> None:
    reference = profile({"x": np.linspace(0, 1, 101)}, {"x": "numeric"}).columns["x"]
    current = np.array([0.5, 2.0, np.nan, np.inf, None], dtype=object)
    histogram = column_histogram(reference, current.astype(float))
    assert histogram["kind"] == "numeric" and len(histogram["x"]) == NUMERIC_BINS
    assert sum(histogram["reference"]) == 101 and sum(histogram["current"]) == 2
    assert histogram["x"][0] > 0 and histogram["x"][-1] < 2.0  # bin centres within [0, 2]
    assert histogram["current"][-1] == 1  # 2.0 falls in the last bin


def test_constant_column_and_empty_window() -> None:
    reference = profile({"x": np.full(50, 3.0)}, {"x": "numeric"}).columns["x"]
    assert column_histogram(reference, None)["current"] == [0] * len(column_histogram(reference, None)["x"])
    assert sum(column_histogram(reference, np.array([3.0, 3.0]))["current"]) == 2


def test_categories_one_sided_and_capped() -> None:
    names = [f"c{i:02d}" for i in range(MAX_CATEGORIES + 5)]
    reference = profile({"c": np.array(names * 2, dtype=object)}, {"c": "categorical"}).columns["c"]
    histogram = column_histogram(reference, np.array(["new"] * 5 + [None, "c00"], dtype=object))
    assert len(histogram["x"]) == MAX_CATEGORIES + 1 and histogram["x"][-1] == OTHER
    assert sum(histogram["reference"]) == 2 * len(names) and sum(histogram["current"]) == 6
    # Ranked by both sides together: the window's new category first, then the reference's.
    assert (
        histogram["x"][:2] == ["new", "c00"] and histogram["reference"][0] == 0 and histogram["current"][:2] == [5, 1]
    )
    assert all(type(name) is str for name in histogram["x"])
