from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.experiments.models import Experiment, PipelineRun, PipelineStage, Run, RunArtifact, Study


class ReadOnlyAdmin(admin.ModelAdmin):
    """Runs, pipelines and studies are written by services (with audit entries), never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "created_at"]
    list_filter = ["project"]
    search_fields = ["name", "description"]
    readonly_fields = ["name_key", "created_at"]


class RunArtifactInline(admin.TabularInline):
    model = RunArtifact
    extra = 0
    can_delete = False
    readonly_fields = ["name", "kind", "sha256", "size_bytes", "content_type", "created_at"]


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "experiment", "status", "algorithm", "parent", "created_at"]
    list_filter = ["status", "algorithm"]
    search_fields = ["name", "experiment__name"]
    inlines = [RunArtifactInline]


class PipelineStageInline(admin.TabularInline):
    model = PipelineStage
    extra = 0
    can_delete = False
    fields = ["name", "status", "attempts", "started_at", "duration_seconds", "cpu_seconds", "peak_rss_bytes", "error"]
    readonly_fields = fields


@admin.register(PipelineRun)
class PipelineRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "project", "experiment", "status", "created_at", "ended_at"]
    list_filter = ["status", "project"]
    inlines = [PipelineStageInline]


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ["storage_name", "project", "status", "metric", "direction", "n_trials", "best_value"]
    list_filter = ["status"]
