from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    """Datasets change only through services, which write the audit log; the admin shows them, never edits them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object | None = None) -> bool:
        return False


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "created_by", "created_at", "updated_at"]
    list_filter = ["project"]
    search_fields = ["name", "description"]


@admin.register(DatasetVersion)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "row_count", "column_count", "blocking_failed", "created_at"]
    list_filter = ["status", "blocking_failed", "format"]
    search_fields = ["dataset__name", "sha256", "file_name"]


@admin.register(DatasetSplit)
class DatasetSplitAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "stratify", "stratified", "train_count", "test_count", "created_at"]
