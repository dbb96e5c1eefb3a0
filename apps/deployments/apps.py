from __future__ import annotations

from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "apps.deployments"
    label = "deployments"
    verbose_name = "Deployments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps

        from apps.deployments import hooks
        from apps.registry.events import register_event_handler
        from apps.telemetry.authentication import register_token_resolver

        # An approved promotion may roll out the version on deployments that follow the model.
        register_event_handler("deployments", hooks.registry_event_handler)
        # Model servers ship prediction events to telemetry with their deployment's token; tokens live here.
        register_token_resolver(hooks.ingest_source_for_token)
        if apps.is_installed("apps.experiments"):
            from apps.experiments.stages import register_stage_handler

            register_stage_handler("deploy", hooks.deploy_stage)
