from __future__ import annotations

from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "apps.experiments"
    label = "experiments"
    verbose_name = "Experiments"

    def ready(self) -> None:
        # Connects the worker-side signal handlers (a revoked stage task finalises its cancellation).
        from apps.experiments import signals  # noqa: F401
        from apps.experiments.services.stage_handlers import register_builtin_stages

        register_builtin_stages()
