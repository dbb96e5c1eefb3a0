"""Status values of runs, pipeline runs, stages and studies, each with the colour the UI shows it in."""

from __future__ import annotations

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return _COLOURS.get(status, "secondary")

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED)


# The states a client may end its run in (`POST runs/{id}/set-terminated/`).
RUN_END_CHOICES = [(status, label) for status, label in RunStatus.choices if status in RunStatus.finished()]


class PipelineRunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    CANCELLING = "cancelling", "Cancelling"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return _COLOURS.get(status, "secondary")

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED)


class PipelineStageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return _COLOURS.get(status, "secondary")

    @classmethod
    def hex(cls, status: str) -> str:
        """The node colour in the pipeline DAG figure (Bootstrap's palette)."""
        return {
            "pending": "#adb5bd",
            "queued": "#6c757d",
            "running": "#0dcaf0",
            "succeeded": "#198754",
            "failed": "#dc3545",
            "skipped": "#ced4da",
            "cancelled": "#212529",
        }.get(status, "#adb5bd")

    @classmethod
    def finished(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.SKIPPED, cls.CANCELLED)


class PipelineStageName(models.TextChoices):
    """The stages of a pipeline, in the order they run."""

    INGEST = "ingest", "Ingest"
    VALIDATE = "validate", "Validate"
    FEATURES = "features", "Features"
    TRAIN = "train", "Train"
    EVALUATE = "evaluate", "Evaluate"
    REGISTER = "register", "Register"
    DEPLOY = "deploy", "Deploy"


class StudyStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return _COLOURS.get(status, "secondary")


class RunArtifactKind(models.TextChoices):
    MODEL = "model", "Model bundle"
    PLOT = "plot", "Plot data"
    REPORT = "report", "Report"
    OTHER = "other", "Other"


_COLOURS = {
    "pending": "secondary",
    "queued": "secondary",
    "running": "info",
    "cancelling": "warning",
    "succeeded": "success",
    "failed": "danger",
    "skipped": "light",
    "cancelled": "dark",
}
