from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.core.models import Job, Project
from apps.datasets.choices import DatasetVersionFormat, DatasetVersionStatus, ValidationStatus


class DatasetQuerySet(models.QuerySet):
    def for_user(self, user: object) -> DatasetQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Dataset(models.Model):
    """A named table in a project, with immutable versions and the validation rules new versions must meet."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=100)
    name_key = models.CharField(max_length=100, editable=False, help_text="The name as compared.")
    description = models.TextField(blank=True)
    rules = models.JSONField(default=dict, blank=True, help_text="Validation rules applied to each new version.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DatasetQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name_key"], name="datasets_dataset_name_unique_in_project")
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("datasets:dataset-detail", args=[self.pk])


class DatasetVersion(models.Model):
    """One immutable content of a dataset, stored by its sha256; uploading the same bytes again finds this row."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3… in upload order within the dataset.")
    sha256 = models.CharField(max_length=64, help_text="The content hash; the file is stored under it.")
    format = models.CharField(max_length=16, choices=DatasetVersionFormat.choices)
    file_name = models.CharField(max_length=255, help_text="The uploaded file's name, sanitised.")
    size_bytes = models.BigIntegerField()
    row_count = models.BigIntegerField()
    column_count = models.PositiveIntegerField()
    schema = models.JSONField(default=dict, blank=True, help_text="Per column: name, type, nullable.")
    profile = models.JSONField(default=dict, blank=True, help_text="Per column statistics; the drift reference.")
    validation = models.JSONField(default=dict, blank=True, help_text="The validation report: checks and status.")
    blocking_failed = models.BooleanField(
        default=False, help_text="A blocking validation rule failed; nothing may train on this version."
    )
    status = models.CharField(
        max_length=16, choices=DatasetVersionStatus.choices, default=DatasetVersionStatus.PENDING, db_index=True
    )
    error = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        help_text="The previous latest version.",
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker started profiling it.")
    profiled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "sha256"], name="datasets_version_content_unique"),
            models.UniqueConstraint(fields=["dataset", "number"], name="datasets_version_number_unique"),
            models.CheckConstraint(
                condition=Q(status__in=DatasetVersionStatus.values), name="datasets_version_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.number}"

    def get_absolute_url(self) -> str:
        return f"{reverse('datasets:dataset-detail', args=[self.dataset_id])}?version={self.number}"

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == DatasetVersionStatus.READY

    @property
    def is_settled(self) -> bool:
        """No worker will change it any more (until someone asks to re-validate)."""
        return self.status in {DatasetVersionStatus.READY, DatasetVersionStatus.FAILED}

    @property
    def validation_status(self) -> str:
        return self.validation.get("status", "")

    @property
    def status_colour(self) -> str:
        return DatasetVersionStatus.colour(self.status)

    @property
    def validation_colour(self) -> str:
        return ValidationStatus.colour(self.validation_status)


class DatasetSplit(models.Model):
    """A reproducible train/test split of a version: the test row indices, stored as a .npy artifact."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="splits")
    test_size = models.FloatField()
    seed = models.PositiveBigIntegerField()
    stratify = models.CharField(max_length=255, blank=True, help_text="The column asked to stratify by, if any.")
    stratified = models.BooleanField(default=False, help_text="Whether the split was actually stratified.")
    train_count = models.PositiveBigIntegerField()
    test_count = models.PositiveBigIntegerField()
    test_indices_sha256 = models.CharField(max_length=64, help_text="Sorted int64 row indices of the test set (.npy).")
    note = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "test_size", "seed", "stratify"], name="datasets_split_parameters_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.version} split {self.test_size:g}/seed {self.seed}"
