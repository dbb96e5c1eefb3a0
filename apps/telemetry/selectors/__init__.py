"""Reads of telemetry, for the apps above it (deployments' canary analysis and autoscaler, dashboards, readouts).

Figures over time windows come from the per-minute rollups (`rollups`), never from raw rows: a window covers the
whole minutes it overlaps, and latency quantiles are interpolated inside the histogram bucket that holds them (as
Prometheus' `histogram_quantile`), computed by the database. Only questions that need single predictions read raw
rows, and then a bounded number of them: the shadow comparison and drift's input batches (`logs`), and performance,
which joins each prediction to its label (`performance`).
"""

from __future__ import annotations

from apps.telemetry.selectors.logs import (
    SHADOW_PAIR_LIMIT,
    input_rows,
    logged_input_batches,
    logged_prediction_batches,
    shadow_pairs,
)
from apps.telemetry.selectors.performance import (
    MAX_INTEGER_CLASSES,
    OUTPUT_QUANTILES,
    PERFORMANCE_ROW_LIMIT,
    LabelledSample,
    PredictionDistribution,
    TrendPoint,
    VersionPerformance,
    labelled_samples,
    performance_by_version,
    performance_trend,
    prediction_distribution,
)
from apps.telemetry.selectors.rollups import (
    QUANTILES,
    WINDOW_WORK_MEM,
    SeriesPoint,
    VersionTotals,
    VersionWindow,
    deployment_window_stats,
    deployments_window_stats,
    last_request_minutes,
    minute_floor,
    prediction_counts,
    request_rate,
    rollup_window,
    version_window_stats,
)

__all__ = [
    "LabelledSample",
    "MAX_INTEGER_CLASSES",
    "OUTPUT_QUANTILES",
    "PERFORMANCE_ROW_LIMIT",
    "PredictionDistribution",
    "QUANTILES",
    "SHADOW_PAIR_LIMIT",
    "SeriesPoint",
    "TrendPoint",
    "VersionPerformance",
    "VersionTotals",
    "VersionWindow",
    "WINDOW_WORK_MEM",
    "deployment_window_stats",
    "deployments_window_stats",
    "input_rows",
    "labelled_samples",
    "last_request_minutes",
    "logged_input_batches",
    "logged_prediction_batches",
    "minute_floor",
    "performance_by_version",
    "performance_trend",
    "prediction_counts",
    "prediction_distribution",
    "request_rate",
    "rollup_window",
    "shadow_pairs",
    "version_window_stats",
]
