from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "apps.monitoring"
    label = "monitoring"
    verbose_name = "Monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Beat's tick and the task counts of /metrics (apps/monitoring/celery_signals.py).
        from apps.monitoring import celery_signals  # noqa: F401
