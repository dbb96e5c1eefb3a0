from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.core.artifacts import get_artifact_store
from apps.core.models import Project
from apps.core.services import normalize_name
from apps.datasets import services
from apps.datasets.models import Dataset
from worker.datasets.demo import DEMO_DATASETS, demo_csv_bytes


class Command(BaseCommand):
    help = (
        "Load scikit-learn's iris, wine, breast_cancer, diabetes and digits as datasets of a project (idempotent). "
        "Their versions are profiled by the Celery worker."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", default="demo", help="The project's slug (default: demo).")

    def handle(self, *args: Any, project: str, **options: Any) -> None:
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"No project with slug {project!r}; run `manage.py seed_demo` first or pass --project.")
        actor = target.created_by or get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        store = get_artifact_store()
        if settings.CELERY_BROKER_URL.startswith("filesystem"):
            # In zero-setup mode the broker is a pair of folders that `run_console` makes; this command runs first.
            for key in ("data_folder_in", "data_folder_out", "processed_folder"):
                Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key]).mkdir(parents=True, exist_ok=True)
        for name, (_, _, description) in DEMO_DATASETS.items():
            dataset = Dataset.objects.filter(project=target, name_key=normalize_name(name)).first()
            if dataset is None:
                dataset = services.dataset_create(project=target, name=name, description=description, actor=actor)
            fd, temp = store.new_temp_file()
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(demo_csv_bytes(name))
                version, created = services.dataset_version_create(
                    dataset=dataset, path=Path(temp), file_name=f"{name}.csv", actor=actor
                )
            finally:
                Path(temp).unlink(missing_ok=True)
            state = "loaded as" if created else "already loaded as"
            self.stdout.write(f"{name}: {state} {version} ({version.row_count:,} rows, {version.status})")
        self.stdout.write(self.style.SUCCESS(f"Demo datasets are in project {target.slug!r}."))
