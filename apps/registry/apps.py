from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Model registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.registry import events, notify

        # In-app notifications; other apps add their hooks (deployments) the same way. Email, webhooks and
        # Slack are not handlers: their deliveries are stored with the event (apps/registry/notify.py).
        events.register_event_handler("inapp", notify.inapp_handle_event)

        from django.apps import apps

        if apps.is_installed("apps.experiments"):
            from apps.experiments.stages import register_stage_handler
            from apps.registry.stages import model_version_register_stage

            register_stage_handler("register", model_version_register_stage)
