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
        # The closed loop: a version a retraining pipeline registers may get its promotion request.
        from apps.alerts.actions import promotion_on_registered
        from apps.registry.events import register_event_handler

        register_event_handler("alerts.retrain_promotion", promotion_on_registered)
