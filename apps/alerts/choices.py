from __future__ import annotations

from django.db import models

from worker.alerts import evaluate as engine


class AlertFigure(models.TextChoices):
    """What a rule watches; each is computed in apps/alerts/figures.py from telemetry, monitoring or deployments."""

    ERROR_RATE = "error_rate", "Error rate (5xx share)"
    LATENCY_P50 = "latency_p50", "Latency p50 (ms)"
    LATENCY_P90 = "latency_p90", "Latency p90 (ms)"
    LATENCY_P99 = "latency_p99", "Latency p99 (ms)"
    THROUGHPUT = "throughput", "Throughput (requests/s)"
    THROUGHPUT_DROP = "throughput_drop", "Throughput drop against the same hour last week (share)"
    ACCURACY = "accuracy", "Accuracy (from labels)"
    ESTIMATED_ACCURACY = "estimated_accuracy", "Estimated accuracy (CBPE, no labels)"
    DRIFT_SHARE = "drift_share", "Drift share (latest drift report)"
    COLUMN_DRIFT = "column_drift", "One column's drift statistic (latest drift report)"
    PREDICTION_DRIFT = "prediction_drift", "Prediction drift (1 when the latest drift report flags it)"
    NO_DATA_MINUTES = "no_data_minutes", "Minutes without predictions"
    REPLICAS_NOT_READY = "replicas_not_ready", "Model server replicas not ready"
    EVENT_DROPS = "event_drops", "Events dropped by the model servers in the window"


class AlertComparator(models.TextChoices):
    GT = "gt", ">"
    GE = "ge", ">="
    LT = "lt", "<"
    LE = "le", "<="


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"

    @classmethod
    def colour(cls, value: str) -> str:
        return {"info": "info", "warning": "warning", "critical": "danger"}[value]


class AlertState(models.TextChoices):
    INACTIVE = engine.INACTIVE, "Inactive"
    PENDING = engine.PENDING, "Pending"
    FIRING = engine.FIRING, "Firing"
    RESOLVED = engine.RESOLVED, "Resolved"
    NODATA = engine.NODATA, "No data"
    ERROR = engine.ERROR, "Error"

    @classmethod
    def colour(cls, value: str) -> str:
        return {
            "inactive": "secondary",
            "pending": "warning",
            "firing": "danger",
            "resolved": "success",
            "nodata": "dark",
            "error": "dark",
        }[value]


class AlertNotificationKind(models.TextChoices):
    FIRING = "firing", "Firing"
    REPEAT = "repeat", "Still firing (reminder)"
    RESOLVED = "resolved", "Resolved"
    TEST = "test", "Test"
