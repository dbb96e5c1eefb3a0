from __future__ import annotations

from django.apps import AppConfig


class ABTestsConfig(AppConfig):
    name = "apps.abtests"
    label = "abtests"
    verbose_name = "A/B tests"
    default_auto_field = "django.db.models.BigAutoField"
