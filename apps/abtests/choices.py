from __future__ import annotations

from django.db import models

from worker.abtests.readout import Decision
from worker.abtests.stats import MEAN, RATE


class ABTestStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"

    @classmethod
    def colour(cls, status: str) -> str:
        return {"draft": "secondary", "running": "info", "stopped": "dark"}[status]


class ABTestMetric(models.TextChoices):
    """The primary metric: from feedback labels (accuracy, mean absolute error) or from posted outcomes."""

    ACCURACY = "accuracy", "Accuracy (from labels)"
    MAE = "mae", "Mean absolute error (from labels)"
    CONVERSION = "conversion", "Conversion rate (outcomes 0/1)"
    VALUE = "value", "Mean value (numeric outcomes, e.g. revenue)"

    @classmethod
    def kind(cls, metric: str) -> str:
        return RATE if metric in (cls.ACCURACY, cls.CONVERSION) else MEAN

    @classmethod
    def higher_is_better(cls, metric: str) -> bool:
        return metric != cls.MAE

    @classmethod
    def from_outcomes(cls, metric: str) -> bool:
        return metric in (cls.CONVERSION, cls.VALUE)


class GuardrailMetric(models.TextChoices):
    ERROR_RATE = "error_rate", "Error rate (5xx answers)"
    P99_LATENCY = "p99_latency_ms", "p99 latency (ms)"


class AssignmentKey(models.TextChoices):
    """Where the model server reads the sticky key each request is split by (serving/spec.py defaults)."""

    HEADER = "header", "X-Request-Key header"
    FIELD = "field", "request_key field of the request body"


class OutcomeKeyType(models.TextChoices):
    REQUEST_ID = "request_id", "Request id"
    ASSIGNMENT_KEY = "assignment_key", "Assignment key"


DECISION_COLOURS = {
    Decision.TREATMENT_WINS: "success",
    Decision.CONTROL_WINS: "warning",
    Decision.NO_DIFFERENCE: "secondary",
    Decision.KEEP_RUNNING: "info",
    Decision.INVALID: "danger",
}
