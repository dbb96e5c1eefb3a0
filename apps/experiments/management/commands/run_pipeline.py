from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import DomainError
from apps.core.models import Project
from apps.experiments import services
from apps.experiments.choices import PipelineRunStatus
from apps.experiments.pipeline_config import STAGE_GROUPS


class Command(BaseCommand):
    help = (
        "Run a pipeline from a YAML config, in this process (default) or on the Celery worker (--queue). "
        "Example: manage.py run_pipeline --config configs/full_pipeline.yaml --project demo"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", required=True, help="Path of the pipeline YAML (or JSON) file.")
        parser.add_argument("--project", default="demo", help="The project's slug (default: demo).")
        parser.add_argument(
            "--stage",
            choices=sorted(STAGE_GROUPS),
            help="Run only up to this stage (data_processing = ingest, validate and features).",
        )
        parser.add_argument("--experiment-id", help="Overrides the config's experiment_id.")
        parser.add_argument("--model-type", help="Overrides model_config.algorithm (e.g. xgboost).")
        parser.add_argument("--queue", action="store_true", help="Queue the stages on the Celery worker and return.")
        parser.add_argument("--user", help="Who runs it (default: the project's creator).")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["config"])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror or exc}") from None
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(
                f"No project with slug {options['project']!r}; run `manage.py seed_demo` or pass --project."
            )
        actor = self._actor(project, options.get("user"))
        try:
            pipeline_run = services.pipeline_run_create(
                project=project,
                actor=actor,
                config_text=text,
                experiment_id=options.get("experiment_id"),
                algorithm=options.get("model_type"),
                stage=options.get("stage"),
                executor=services.EXECUTOR_WORKER if options["queue"] else services.EXECUTOR_INLINE,
            )
        except ValidationError as exc:
            details = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(f"{path}: {details}") from None
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        if options["queue"]:
            self.stdout.write(f"Queued pipeline run {pipeline_run.pk}: {pipeline_run.get_absolute_url()}")
            return
        pipeline_run = services.pipeline_run_execute_inline(pipeline_run=pipeline_run)
        for stage in pipeline_run.stages.order_by("position"):
            timing = f" {stage.duration_seconds:.2f}s" if stage.duration_seconds is not None else ""
            note = f" ({stage.error})" if stage.error else ""
            self.stdout.write(f"  {stage.name:<9} {stage.status}{timing}{note}")
        run = pipeline_run.run
        summary = ", ".join(f"{k}={v:.4g}" for k, v in run.metrics.items() if not k.endswith("_seconds"))
        self.stdout.write(f"Run {run.pk} in experiment {pipeline_run.experiment.name}: {summary or 'no metrics'}")
        if pipeline_run.status != PipelineRunStatus.SUCCEEDED:
            raise CommandError(f"Pipeline run {pipeline_run.pk} {pipeline_run.status}: {pipeline_run.error}")
        self.stdout.write(self.style.SUCCESS(f"Pipeline run {pipeline_run.pk} succeeded."))

    def _actor(self, project: Project, username: str | None) -> Any:
        if username:
            user = get_user_model().objects.filter(username=username, is_active=True).first()
            if user is None:
                raise CommandError(f"No active user {username!r}.")
            return user
        return project.created_by
