"""Reference-vs-current histograms of one column, for the drift report page: plain counts, no plotting.

A numeric column is cut into `NUMERIC_BINS` equal-width bins over the range of both sides (the reference's
stored sorted values, the window's finite values); a categorical one (or a numeric one the profile keeps as
categories) is counted per value, the `MAX_CATEGORIES` most frequent over both sides, the rest as "other".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.monitoring.drift import NUMERIC, ColumnProfile

NUMERIC_BINS = 30
MAX_CATEGORIES = 20
OTHER = "(other)"


def _finite(raw: np.ndarray) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    return values[np.isfinite(values)]


def _present(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=object)
    if not raw.size:
        return raw.astype(str)
    keep = np.frompyfunc(lambda v: v is not None and v == v, 1, 1)(raw).astype(bool)
    return raw[keep].astype(str)


def column_histogram(reference: ColumnProfile, current: np.ndarray | None) -> dict[str, Any]:
    """`{"kind", "x", "reference", "current"}`: bin centres (numeric) or categories, and each side's counts."""
    current = np.asarray([] if current is None else current)
    if reference.kind == NUMERIC and reference.values.size:
        now = _finite(current) if current.size else np.empty(0)
        both_min = min(reference.values[0], now.min()) if now.size else reference.values[0]
        both_max = max(reference.values[-1], now.max()) if now.size else reference.values[-1]
        edges = np.linspace(both_min, both_max if both_max > both_min else both_min + 1, NUMERIC_BINS + 1)
        ref_counts = np.histogram(reference.values, bins=edges)[0]
        cur_counts = np.histogram(now, bins=edges)[0]
        centres = (edges[:-1] + edges[1:]) / 2
        return {
            "kind": NUMERIC,
            "x": centres.tolist(),
            "reference": ref_counts.tolist(),
            "current": cur_counts.tolist(),
        }
    counts: dict[str, list[int]] = {}
    for category, count in zip(reference.categories.astype(str).tolist(), reference.counts.tolist(), strict=True):
        counts.setdefault(category, [0, 0])[0] += count
    values, value_counts = np.unique(_present(current), return_counts=True)
    for category, count in zip(values.tolist(), value_counts.tolist(), strict=True):
        counts.setdefault(category, [0, 0])[1] += count
    ranked = sorted(counts.items(), key=lambda item: -(item[1][0] + item[1][1]))
    shown, rest = ranked[:MAX_CATEGORIES], ranked[MAX_CATEGORIES:]
    if rest:
        shown.append((OTHER, [sum(c[0] for _, c in rest), sum(c[1] for _, c in rest)]))
    return {
        "kind": "categorical",
        "x": [name for name, _ in shown],
        "reference": [c[0] for _, c in shown],
        "current": [c[1] for _, c in shown],
    }
