from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "apps.alerts"
    label = "alerts"
    verbose_name = "Alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A delivery of an alert that finally fails is told to the project's owners in the console.
        from apps.alerts.notify import delivery_failed
        from apps.core.notifications.hooks import register_failure_handler

        register_failure_handler("alerts.", delivery_failed)
        # The closed loop: a version a retraining pipeline registers may get a promotion request and an A/B test.
        from apps.alerts.actions import challenger_on_registered
        from apps.registry.events import register_event_handler

        register_event_handler("alerts.retrain_challenger", challenger_on_registered)
