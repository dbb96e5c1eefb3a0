from __future__ import annotations

from django.contrib import admin

from apps.monitoring.models import DriftReference, DriftReport


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
