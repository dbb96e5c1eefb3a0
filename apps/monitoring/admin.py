from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.monitoring.models import DriftReference, DriftReport, DriftSettings, Heartbeat, TaskMetric


@admin.register(DriftReference)
class DriftReferenceAdmin(admin.ModelAdmin):
    list_display = ["id", "deployment", "model_version", "source", "n_rows", "created_at"]
    list_filter = ["source"]
    readonly_fields = ["profile_sha256", "columns", "n_rows"]


@admin.register(DriftReport)
class DriftReportAdmin(admin.ModelAdmin):
    list_display = ["id", "deployment", "window_start", "window_end", "drift_share", "dataset_drift", "n_rows"]
    list_filter = ["dataset_drift"]
    readonly_fields = ["result", "histograms", "job"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the system (or checked by a service): shown, never edited here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(DriftSettings)
class DriftSettingsAdmin(ReadOnlyAdmin):
    """Set from the drift settings page or API, which check every value against the engine and the model."""

    list_display = ["deployment", "drift_share", "prediction_drift", "updated_by", "updated_at"]


@admin.register(Heartbeat)
class HeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["name", "seen_at", "detail"]


@admin.register(TaskMetric)
class TaskMetricAdmin(ReadOnlyAdmin):
    list_display = ["task", "outcome", "count", "seconds_sum"]
    list_filter = ["outcome"]
