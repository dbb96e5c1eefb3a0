"""Drift monitoring: the reference a deployment's traffic is compared with, and each comparison's report."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.core.choices import JobStatus
from apps.core.models import Job, Project
from apps.monitoring.choices import ReferenceSource


class DriftReference(models.Model):
    """A summary of what a model version saw: its training dataset version, or a window of logged traffic.

    The profile (worker.monitoring.drift.ReferenceProfile) is stored once in the artifact store, by sha256, so a
    report reads it instead of the reference data.
    """

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="drift_references")
    model_version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=16, choices=ReferenceSource.choices)
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    profile_sha256 = models.CharField(max_length=64)
    n_rows = models.PositiveBigIntegerField()
    columns = models.JSONField(default=dict, help_text="Column name -> numeric or categorical.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(source=ReferenceSource.TRAINING, dataset_version__isnull=False)
                | Q(source=ReferenceSource.TRAFFIC, window_start__isnull=False, window_end__isnull=False),
                name="monitoring_reference_source_complete",
            ),
        ]

    def __str__(self) -> str:
        if self.source == ReferenceSource.TRAINING:
            return f"training data {self.dataset_version}" if self.dataset_version else "training data (deleted)"
        return f"traffic {self.window_start:%Y-%m-%d %H:%M} – {self.window_end:%Y-%m-%d %H:%M}"


class DriftReportQuerySet(models.QuerySet):
    def for_user(self, user: object) -> DriftReportQuerySet:
        return self.filter(deployment__project__in=Project.objects.for_user(user))


class DriftReport(models.Model):
    """One window of a deployment's logged inputs compared with a reference; run as a core.Job."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="drift_reports")
    model_version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="+")
    reference = models.ForeignKey(DriftReference, on_delete=models.CASCADE, related_name="reports")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    result = models.JSONField(default=dict, blank=True, help_text="worker.monitoring.drift.DriftReport.to_dict().")
    histograms = models.JSONField(default=dict, blank=True, help_text="Per column: reference and current counts.")
    drift_share = models.FloatField(null=True, blank=True)
    dataset_drift = models.BooleanField(null=True, blank=True)
    n_rows = models.PositiveBigIntegerField(default=0, help_text="Input rows in the window.")
    reason = models.TextField(blank=True, help_text="Why no column could be tested, when none could.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DriftReportQuerySet.as_manager()

    class Meta:
        ordering = ["-window_end", "-id"]
        indexes = [models.Index(fields=["deployment", "window_end"], name="monitoring_report_window")]
        constraints = [
            models.CheckConstraint(condition=Q(window_start__lt=models.F("window_end")), name="monitoring_window_order")
        ]

    def __str__(self) -> str:
        return f"drift of {self.deployment} {self.window_start:%Y-%m-%d %H:%M} – {self.window_end:%Y-%m-%d %H:%M}"

    def get_absolute_url(self) -> str:
        return reverse("monitoring:report-detail", args=[self.pk])

    @property
    def status(self) -> str:
        return self.job.status if self.job else JobStatus.FAILED

    @property
    def status_colour(self) -> str:
        return JobStatus.colour(self.status)


class Heartbeat(models.Model):
    """The last sign of life of a part of the system the console cannot ask directly: `beat` (the scheduler
    sent a task), `worker` (a worker ran the heartbeat task beat sends). One row per name, updated in place."""

    name = models.CharField(max_length=64, unique=True)
    seen_at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.seen_at:%Y-%m-%d %H:%M:%S}"


# Upper bounds (seconds) of the task duration histogram's buckets; one more bucket takes everything slower.
TASK_DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.25, 1, 5, 30, 120, 600, 3600)
TASK_BUCKET_FIELDS: tuple[str, ...] = tuple(f"bucket_{i:02d}" for i in range(len(TASK_DURATION_BUCKETS) + 1))


class TaskMetric(models.Model):
    """Celery tasks run, by task name and outcome, with a duration histogram: counted by the workers (task
    signals) in the database, so the web process's /metrics reports every worker's tasks. Counts only grow."""

    task = models.CharField(max_length=200)
    outcome = models.CharField(max_length=16, help_text="success, failure or retry.")
    count = models.PositiveBigIntegerField(default=0)
    seconds_sum = models.FloatField(default=0.0)
    bucket_00 = models.PositiveBigIntegerField(default=0)
    bucket_01 = models.PositiveBigIntegerField(default=0)
    bucket_02 = models.PositiveBigIntegerField(default=0)
    bucket_03 = models.PositiveBigIntegerField(default=0)
    bucket_04 = models.PositiveBigIntegerField(default=0)
    bucket_05 = models.PositiveBigIntegerField(default=0)
    bucket_06 = models.PositiveBigIntegerField(default=0)
    bucket_07 = models.PositiveBigIntegerField(default=0)
    bucket_08 = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["task", "outcome"]
        constraints = [models.UniqueConstraint(fields=["task", "outcome"], name="monitoring_task_metric_key")]

    def __str__(self) -> str:
        return f"{self.task} {self.outcome}: {self.count}"


class DriftSettings(models.Model):
    """How a deployment's drift reports test: per-column overrides of the test and its threshold, the share of
    drifted columns that makes dataset drift, and whether the model's outputs are tested too. Absent: defaults."""

    deployment = models.OneToOneField("deployments.Deployment", on_delete=models.CASCADE, related_name="drift_settings")
    columns = models.JSONField(default=dict, blank=True, help_text="Column -> {test, threshold} (either may be null).")
    drift_share = models.FloatField(default=0.5, help_text="Dataset drift when at least this share of columns drift.")
    prediction_drift = models.BooleanField(
        default=True, help_text="Test the predictions and class probabilities (with a traffic reference)."
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "drift settings"
        constraints = [
            models.CheckConstraint(
                condition=Q(drift_share__gt=0, drift_share__lte=1), name="monitoring_settings_share_range"
            )
        ]

    def __str__(self) -> str:
        return f"drift settings of {self.deployment}"
