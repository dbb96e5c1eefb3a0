from __future__ import annotations

from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        # The outbox's tasks live in the notifications package, which Celery's autodiscovery does not look in.
        from apps.core.notifications import tasks  # noqa: F401

        # Uploads are written here before they are renamed into the store, so it must exist
        # and sit on the same filesystem as ARTIFACT_ROOT.
        Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
        Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
        # The zero-setup broker keeps its queues in folders that every process must find.
        if settings.CELERY_BROKER_URL.startswith("filesystem"):
            for key in ("data_folder_in", "processed_folder", "control_folder"):
                Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key]).mkdir(parents=True, exist_ok=True)
