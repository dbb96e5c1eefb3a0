from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.models import Project
from apps.datasets.choices import DatasetVersionStatus
from apps.datasets.models import Dataset
from apps.datasets.services import dataset_version_profile
from apps.experiments import services
from apps.experiments.choices import PipelineRunStatus
from apps.experiments.models import PipelineRun

DEMO_CONFIG = "configs/iris_random_forest.yaml"
DEMO_EXPERIMENT = "exp_001"
# How long to wait for a worker that is profiling the iris version right now.
PROFILING_WAIT_SECONDS = 60


class Command(BaseCommand):
    help = "Train and track the demo iris pipeline in this process (idempotent), so it shows in the UI at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", default="demo", help="The project's slug (default: demo).")

    def handle(self, *args: Any, project: str, **options: Any) -> None:
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"No project {project!r}; run `manage.py seed_demo` and `load_demo_datasets` first.")
        done = PipelineRun.objects.filter(
            project=target, experiment__name=DEMO_EXPERIMENT, status=PipelineRunStatus.SUCCEEDED
        ).first()
        if done is not None:
            self.stdout.write(f"The demo pipeline already ran: pipeline run {done.pk} ({done.get_absolute_url()}).")
            return
        self._ensure_iris_ready(target)
        text = (settings.BASE_DIR / DEMO_CONFIG).read_text(encoding="utf-8")
        pipeline_run = services.pipeline_run_create(
            project=target, actor=target.created_by, config_text=text, executor=services.EXECUTOR_INLINE
        )
        pipeline_run = services.pipeline_run_execute_inline(pipeline_run=pipeline_run)
        if pipeline_run.status != PipelineRunStatus.SUCCEEDED:
            raise CommandError(f"The demo pipeline {pipeline_run.status}: {pipeline_run.error}")
        metrics = pipeline_run.run.metrics
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo pipeline run {pipeline_run.pk}: random forest on iris, "
                f"accuracy {metrics.get('accuracy', 0):.3f} "
                f"({pipeline_run.get_absolute_url()})."
            )
        )

    def _ensure_iris_ready(self, project: Project) -> None:
        """Profile the iris version here if the worker has not (make run starts the worker afterwards)."""
        dataset = Dataset.objects.filter(project=project, name="iris").first()
        version = dataset.versions.order_by("-number").first() if dataset else None
        if version is None:
            raise CommandError("The demo project has no iris dataset; run `manage.py load_demo_datasets` first.")
        if version.status == DatasetVersionStatus.PENDING:
            dataset_version_profile(version_id=version.pk)
        deadline = time.monotonic() + PROFILING_WAIT_SECONDS
        version.refresh_from_db()
        while version.status == DatasetVersionStatus.PROFILING and time.monotonic() < deadline:
            time.sleep(1)
            version.refresh_from_db()
        if version.status != DatasetVersionStatus.READY:
            raise CommandError(f"{version} is {version.status}: {version.error or 'not ready'}")
