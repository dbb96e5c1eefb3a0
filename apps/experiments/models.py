"""Experiments, runs with their params/metrics/artifacts, pipeline runs with their stages, and HPO studies."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.core.models import Project
from apps.experiments.choices import (
    PipelineRunStatus,
    PipelineStageName,
    PipelineStageStatus,
    RunArtifactKind,
    RunStatus,
    StudyStatus,
)


class ExperimentQuerySet(models.QuerySet):
    def for_user(self, user: object) -> ExperimentQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Experiment(models.Model):
    """A named group of runs in a project (a pipeline's `experiment_id`)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=100)
    name_key = models.CharField(max_length=100, editable=False, help_text="The name as compared.")
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name_key"], name="experiments_experiment_name_unique")
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("experiments:experiment-detail", args=[self.pk])


class RunQuerySet(models.QuerySet):
    def for_user(self, user: object) -> RunQuerySet:
        return self.filter(experiment__project__in=Project.objects.for_user(user))


class Run(models.Model):
    """One training (or any tracked) execution: params, metric series, artifacts, timings, lineage."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # The latest value of each metric, kept beside the series so run tables need no aggregation.
    metrics = models.JSONField(default=dict, blank=True, help_text="Latest value per metric name.")
    cv_metrics = models.JSONField(default=dict, blank=True, help_text="Cross-validation mean/std per metric.")
    plots = models.JSONField(default=dict, blank=True, help_text="Confusion matrix, ROC curves, residuals.")
    task = models.CharField(max_length=16, blank=True, help_text="classification or regression.")
    algorithm = models.CharField(max_length=64, blank=True)
    passes_thresholds = models.BooleanField(null=True, blank=True)
    threshold_failures = models.JSONField(default=list, blank=True)
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    dataset_split = models.ForeignKey(
        "datasets.DatasetSplit", null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    code_version = models.CharField(max_length=64, blank=True, help_text="git sha of the console checkout.")
    package_versions = models.JSONField(default=dict, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    pipeline_run = models.ForeignKey(
        "experiments.PipelineRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    study = models.ForeignKey(
        "experiments.Study", null=True, blank=True, on_delete=models.SET_NULL, related_name="trial_runs"
    )
    trial_number = models.PositiveIntegerField(null=True, blank=True, help_text="The Optuna trial number.")
    trial_slot = models.PositiveIntegerField(null=True, blank=True, help_text="Which of the study's trial tasks.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    task_id = models.CharField(max_length=64, blank=True, help_text="The Celery task running it now.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="experiments_run_status_valid"),
            models.UniqueConstraint(
                fields=["study", "trial_slot"],
                condition=Q(study__isnull=False),
                name="experiments_run_one_per_trial_slot",
            ),
        ]
        indexes = [models.Index(fields=["experiment", "status", "-created_at"], name="experiments_run_list_idx")]

    def __str__(self) -> str:
        return self.name or f"run {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("experiments:run-detail", args=[self.pk])

    @property
    def project(self) -> Project:
        return self.experiment.project

    @property
    def is_finished(self) -> bool:
        return self.status in RunStatus.finished()

    @property
    def status_colour(self) -> str:
        return RunStatus.colour(self.status)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


class RunMetric(models.Model):
    """One point of a metric series: (name, step, value, time)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_points")
    name = models.CharField(max_length=128)
    step = models.BigIntegerField(default=0)
    value = models.FloatField()
    timestamp = models.DateTimeField()

    class Meta:
        ordering = ["run", "name", "step", "id"]
        indexes = [models.Index(fields=["run", "name", "step"], name="experiments_metric_series_idx")]

    def __str__(self) -> str:
        return f"{self.name}[{self.step}]={self.value:g}"


class RunArtifact(models.Model):
    """A file a run produced, kept in the content-addressed artifact store; the model bundle is one."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=RunArtifactKind.choices, default=RunArtifactKind.OTHER)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    content_type = models.CharField(max_length=100, default="application/octet-stream")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="experiments_artifact_name_unique")]

    def __str__(self) -> str:
        return self.name


class PipelineRunQuerySet(models.QuerySet):
    def for_user(self, user: object) -> PipelineRunQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class PipelineRun(models.Model):
    """One execution of a pipeline config: its stages run one after another as Celery tasks."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pipeline_runs")
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="pipeline_runs")
    config = models.JSONField(help_text="The normalised pipeline config.")
    config_text = models.TextField(blank=True, help_text="The YAML or JSON text it was given as.")
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion", on_delete=models.PROTECT, related_name="pipeline_runs"
    )
    status = models.CharField(
        max_length=16, choices=PipelineRunStatus.choices, default=PipelineRunStatus.QUEUED, db_index=True
    )
    executor = models.CharField(
        max_length=16, default="worker", help_text="worker: stages run as Celery tasks; inline: in this process."
    )
    run = models.OneToOneField(
        Run,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owning_pipeline_run",
        help_text="The pipeline's run: params, metrics and the candidate model.",
    )
    candidate_run = models.ForeignKey(
        Run,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The run whose model is the pipeline's candidate (the best trial under a search).",
    )
    error = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = PipelineRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=PipelineRunStatus.values), name="experiments_pipeline_status_valid"
            )
        ]

    def __str__(self) -> str:
        return f"pipeline run {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("experiments:pipeline-detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in PipelineRunStatus.finished()

    @property
    def status_colour(self) -> str:
        return PipelineRunStatus.colour(self.status)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


class PipelineStage(models.Model):
    """One stage of a pipeline run, with its timings, resource use, log and JSON outputs."""

    pipeline_run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="stages")
    name = models.CharField(max_length=16, choices=PipelineStageName.choices)
    position = models.PositiveSmallIntegerField()
    status = models.CharField(
        max_length=16, choices=PipelineStageStatus.choices, default=PipelineStageStatus.PENDING, db_index=True
    )
    requested = models.BooleanField(default=True, help_text="False when the run was limited to earlier stages.")
    outputs = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True, help_text="The Celery task running the stage.")
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    cpu_seconds = models.FloatField(null=True, blank=True, help_text="User + system CPU time of the worker.")
    peak_rss_bytes = models.BigIntegerField(null=True, blank=True, help_text="RSS high-water mark during the stage.")

    class Meta:
        ordering = ["pipeline_run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline_run", "name"], name="experiments_stage_unique"),
            models.CheckConstraint(
                condition=Q(status__in=PipelineStageStatus.values), name="experiments_stage_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline_run} · {self.name}"

    @property
    def is_finished(self) -> bool:
        return self.status in PipelineStageStatus.finished()

    @property
    def status_colour(self) -> str:
        return PipelineStageStatus.colour(self.status)


class StudyQuerySet(models.QuerySet):
    def for_user(self, user: object) -> StudyQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Study(models.Model):
    """A hyperparameter search; Optuna keeps its trials in our database under `storage_name`."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="studies")
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="studies")
    pipeline_run = models.OneToOneField(
        PipelineRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="study"
    )
    parent_run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="studies")
    storage_name = models.CharField(max_length=200, unique=True, help_text="The Optuna study name.")
    metric = models.CharField(max_length=64)
    direction = models.CharField(max_length=8, help_text="maximize or minimize.")
    sampler = models.CharField(max_length=16)
    pruner = models.CharField(max_length=16)
    n_trials = models.PositiveIntegerField()
    timeout_seconds = models.FloatField(null=True, blank=True, help_text="The time budget; later trials are not run.")
    search = models.JSONField(default=dict, help_text="The search config: algorithms and spaces.")
    status = models.CharField(max_length=16, choices=StudyStatus.choices, default=StudyStatus.RUNNING, db_index=True)
    finished_slots = models.JSONField(default=list, blank=True, help_text="Trial tasks that are done.")
    best_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    best_value = models.FloatField(null=True, blank=True)
    best_params = models.JSONField(default=dict, blank=True)
    importances = models.JSONField(default=dict, blank=True, help_text="Parameter importances, or why there are none.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.storage_name

    def get_absolute_url(self) -> str:
        return reverse("experiments:study-detail", args=[self.pk])

    @property
    def status_colour(self) -> str:
        return StudyStatus.colour(self.status)
