from __future__ import annotations

from django.db import models


class DatasetVersionStatus(models.TextChoices):
    """Where a version is in its life: uploaded, being profiled by the worker, ready, or failed."""

    PENDING = "pending", "Pending"
    PROFILING = "profiling", "Profiling"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"

    @classmethod
    def colour(cls, status: str) -> str:
        return {"pending": "secondary", "profiling": "info", "ready": "success", "failed": "danger"}[status]


class DatasetVersionFormat(models.TextChoices):
    CSV = "csv", "CSV"
    PARQUET = "parquet", "Parquet"


class ValidationStatus(models.TextChoices):
    """The outcome of one validation check, and of a whole report (its worst check)."""

    PASS = "pass", "Pass"
    WARN = "warn", "Warning"
    FAIL = "fail", "Fail"

    @classmethod
    def colour(cls, status: str) -> str:
        return {"pass": "success", "warn": "warning", "fail": "danger"}.get(status, "secondary")
