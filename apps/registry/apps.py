from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Model registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.registry import events
        from apps.registry.channels import email, inapp, webhook

        # The registry's own channels; other apps add theirs (Slack, the deployments hook) the same way.
        events.register_event_handler("inapp", inapp.handle_event)
        events.register_event_handler("email", email.handle_event)
        events.register_event_handler("webhook", webhook.handle_event)

        from django.apps import apps

        if apps.is_installed("apps.experiments"):
            from apps.experiments.stages import register_stage_handler
            from apps.registry.stages import model_version_register_stage

            register_stage_handler("register", model_version_register_stage)
